//! Server logs that arrive by syslog instead of being read from a file: the header of
//! each message (`header`), where a message ends in a TCP stream (`frame`), and
//! PostgreSQL's messages put back together from its chunks (`rejoin`). All plain code;
//! the receiver that reads the sockets feeds what comes out into the same parser,
//! classes and spool as a tailed file.

pub mod frame;
pub mod header;
pub mod receiver;
pub mod rejoin;
