//! Where events go, and how each output is named.

/// Where events go. Each output takes its batches from the spool and acknowledges them
/// on its own; an event leaves the spool when every configured output has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Output {
    /// The listener protocol.
    Listener,
    /// OTLP/HTTP log records to an OpenTelemetry Collector.
    Otlp,
}

impl Output {
    /// Every output, in a fixed order.
    pub const ALL: [Output; 2] = [Output::Listener, Output::Otlp];

    /// The name in the spool, status, logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        self.naming().name
    }

    /// The output named `s`.
    pub fn parse(s: &str) -> Option<Output> {
        Output::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// How the output is named wherever the agent speaks of it.
    pub fn naming(self) -> &'static Naming {
        match self {
            Output::Listener => &Naming::LISTENER,
            Output::Otlp => &Naming::OTLP,
        }
    }
}

/// How an output is named in the spool, status, metrics, messages and the agent's log.
#[derive(Debug, PartialEq, Eq)]
pub struct Naming {
    /// Which output.
    pub output: Output,
    /// In the spool, logs and the `output` label of metrics.
    pub name: &'static str,
    /// Its shipper's child name in status and metrics.
    pub child: &'static str,
    /// In messages: "listener", "OTLP receiver".
    pub who: &'static str,
    /// Its config section.
    pub section: &'static str,
    /// The key of its URL.
    pub url_key: &'static str,
    /// The key of its credentials.
    pub credential_key: &'static str,
    /// What its credentials are called: "token", "credentials".
    pub credential: &'static str,
    /// The label of its line in the summary of `status`.
    pub summary_label: &'static str,
}

impl Naming {
    /// The listener's.
    pub const LISTENER: Naming = Naming {
        output: Output::Listener,
        name: "listener",
        child: "shipper",
        who: "listener",
        section: "listener",
        url_key: "listener.url",
        credential_key: "listener.token",
        credential: "token",
        summary_label: "delivery",
    };
    /// The OTLP receiver's.
    pub const OTLP: Naming = Naming {
        output: Output::Otlp,
        name: "otlp",
        child: "shipper_otlp",
        who: "OTLP receiver",
        section: "otlp",
        url_key: "otlp.endpoint",
        credential_key: "otlp.headers",
        credential: "credentials",
        summary_label: "otlp",
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_output_is_named_by_its_own_row_and_names_are_unique() {
        let mut names = std::collections::BTreeSet::new();
        for o in Output::ALL {
            let n = o.naming();
            assert_eq!(n.output, o);
            assert_eq!(Output::parse(n.name), Some(o));
            assert!(n.url_key.starts_with(&format!("{}.", n.section)), "{n:?}");
            assert!(
                n.credential_key.starts_with(&format!("{}.", n.section)),
                "{n:?}"
            );
            assert!(names.insert(n.name) && names.insert(n.child), "{n:?}");
        }
    }
}
