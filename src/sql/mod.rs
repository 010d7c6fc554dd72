//! SQL text, read the way PostgreSQL reads it. Every part of the agent that looks inside a
//! statement — password masking and literal redaction, the request id of a sqlcommenter
//! comment, the statement fingerprint, the statement text in front of an auto_explain
//! plan — goes through [`lex`], so that what the agent takes for a string, a comment or
//! code is what the server took it for. A second, hand-written reading in some corner is
//! how a comment inside a string literal once became a request id and a dollar-quoted
//! string once became a plan.
//!
//! The rules are those of PostgreSQL's scanner (`src/backend/parser/scan.l`); the crate's
//! tests compare the two token by token over generated hostile texts.

pub mod lex;
pub mod readonly;
pub mod redact;

pub use lex::{Kind, Lexer, StringForm, Token};

#[cfg(test)]
mod differential;
