//! The table of outputs: for each, what its shipper is built from and how. Its names are
//! its [`Naming`](crate::base::Naming); its config section is read by `config`, which
//! also says which outputs are configured (`Config::outputs`).

use std::rc::Rc;

use slog::Logger;

use super::{Origin, OtlpPost, Post, Transport};
use crate::config::{Config, ListenerConfig};
use crate::model::Output;

/// One output's row.
pub struct Spec {
    /// Which output.
    pub output: Output,
    /// Its own settings differ between two configs (its shipper restarts on reload).
    pub changed: fn(&Config, &Config) -> bool,
    /// Its delivery settings: batch sizes, timeout, retry.
    pub delivery: fn(&Config) -> ListenerConfig,
    /// Builds its transport, on the thread the shipper runs on (HTTP clients are not
    /// `Send`).
    pub transport: fn(&Config, Origin, &Logger) -> Rc<dyn Transport>,
}

/// Every output, in the order of [`Output::ALL`].
pub const OUTPUTS: [Spec; 2] = [
    Spec {
        output: Output::Listener,
        changed: |old, new| old.listener != new.listener,
        delivery: |c| c.listener.clone(),
        transport: |c, origin, _| Rc::new(Post::new(&c.listener, origin)),
    },
    Spec {
        output: Output::Otlp,
        changed: |old, new| old.otlp != new.otlp,
        delivery: |c| c.otlp.delivery.clone(),
        transport: |c, origin, log| Rc::new(OtlpPost::new(&c.otlp, origin).logging(log.clone())),
    },
];

/// The row of `output`.
pub fn spec(output: Output) -> &'static Spec {
    &OUTPUTS[output as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_output_has_its_row_in_its_place() {
        for o in Output::ALL {
            assert_eq!(spec(o).output, o);
        }
        assert_eq!(OUTPUTS.len(), Output::ALL.len());
    }
}
