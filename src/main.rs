//! The `postgres-agent` binary; everything lives in the library.

fn main() {
    postgres_agent::memory::limit_arenas();
    std::process::exit(postgres_agent::commands::main());
}
