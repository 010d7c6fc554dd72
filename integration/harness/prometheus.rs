//! Prometheus for the tests: plain HTTP requests to an endpoint, and a real Prometheus
//! server scraping the agent (and, for the oracle, postgres_exporter).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::wait_for;

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// One HTTP/1.0 request; the status code and body, `None` if nothing answers.
pub fn http(port: u16, request: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    http(
        port,
        &format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"),
    )
}

/// The value of a sample line of the exposition (`name{labels} value`).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// A real Prometheus scraping 127.0.0.1:`target` every second; killed on drop.
pub struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    pub fn start(dir: &Path, target: u16) -> Prometheus {
        Prometheus::start_jobs(dir, &[("agent", target)])
    }

    /// Scraping each (job, port) every second.
    pub fn start_jobs(dir: &Path, jobs: &[(&str, u16)]) -> Prometheus {
        let conf = dir.join("prometheus.yml");
        let mut yml =
            String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
        for (job, port) in jobs {
            yml += &format!(
                "  - job_name: {job}\n    static_configs:\n      - targets: ['127.0.0.1:{port}']\n"
            );
        }
        std::fs::write(&conf, yml).expect("prometheus.yml");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package `prometheus`; .ci/run installs it)");
        Prometheus { child, port }
    }

    /// An API answer's `data`, `None` unless it answered 200 with success.
    pub fn api(&self, path_and_query: &str) -> Option<Value> {
        let (status, body) = get(self.port, path_and_query)?;
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        (v["status"] == "success").then(|| v["data"].clone())
    }

    /// Every series of an instant query: labels and value.
    pub fn query(&self, query: &str) -> Option<Vec<(Value, f64)>> {
        let data = self.api(&format!("/api/v1/query?query={}", encode(query)))?;
        Some(
            data["result"]
                .as_array()?
                .iter()
                .filter_map(|r| {
                    let v = r["value"][1].as_str()?;
                    let v = match v {
                        "NaN" => f64::NAN,
                        "+Inf" => f64::INFINITY,
                        "-Inf" => f64::NEG_INFINITY,
                        v => v.parse().ok()?,
                    };
                    Some((r["metric"].clone(), v))
                })
                .collect(),
        )
    }

    /// The value of an instant query with one series, `None` while it has none.
    pub fn value(&self, query: &str) -> Option<f64> {
        let q = encode(query);
        let (status, body) = get(self.port, &format!("/api/v1/query?query={q}"))?;
        if status != 200 {
            return None;
        }
        let v: Value = serde_json::from_str(&body).ok()?;
        let result = v["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }

    pub fn wait_value(&self, query: &str, want: f64) {
        wait_for(
            &format!("prometheus: {query} == {want}"),
            Duration::from_secs(60),
            || (self.value(query) == Some(want)).then_some(()),
        );
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `text` as a URL query value.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
