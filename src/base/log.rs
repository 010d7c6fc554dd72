//! The log source's settings as the configuration names them.

/// A log file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Format {
    /// `log_destination = 'stderr'`.
    #[serde(rename = "stderr")]
    Stderr,
    /// `csvlog`.
    #[serde(rename = "csvlog")]
    Csv,
    /// `jsonlog` (PG15+).
    #[serde(rename = "jsonlog")]
    Json,
}

impl Format {
    /// From `[logs] format` / `--format`; `auto` is `None`.
    pub fn parse(s: &str) -> Result<Option<Format>, String> {
        match s {
            "auto" | "" => Ok(None),
            "stderr" => Ok(Some(Format::Stderr)),
            "csvlog" | "csv" => Ok(Some(Format::Csv)),
            "jsonlog" | "json" => Ok(Some(Format::Json)),
            _ => Err(format!(
                "unknown log format {s:?} (auto, stderr, csvlog, jsonlog)"
            )),
        }
    }

    /// The name the server uses (`log_destination`, `current_logfiles`).
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Stderr => "stderr",
            Format::Csv => "csvlog",
            Format::Json => "jsonlog",
        }
    }
}

/// Where to start in a log that was never read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// From the first byte of the current file.
    Beginning,
    /// From the end of the current file (what is already there is not shipped).
    End,
}
