//! The `postgres-agent` binary; everything lives in the library.

fn main() {
    std::process::exit(postgres_agent::commands::main());
}
