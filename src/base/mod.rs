//! The vocabulary every layer shares: what an event is of ([`EventKind`]), where events
//! go ([`Output`]) and how each is named. Plain data and tables; this module imports
//! nothing else of the crate, so anything can use it without making a circle.

mod kind;
mod log;
mod output;

pub use kind::{EventKind, Every, HealthKeys, KindInfo, KINDS};
pub use log::{Format, StartAt};
pub use output::{Naming, Output};
