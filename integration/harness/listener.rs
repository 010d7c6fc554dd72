//! A real HTTP listener on 127.0.0.1:0 that records every request and answers as told:
//! 200, any status, or not at all (stopped: connections are refused).

use std::io::Read;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

/// How the listener answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 200 (or 401 when the token is wrong).
    Ok,
    /// This status for every request.
    Status(u16),
    /// This status with `Retry-After: <seconds>`.
    RetryAfter(u16, u64),
    /// 400 for any batch holding an event whose JSON contains [`REJECT_MARK`], 200
    /// otherwise (a listener that refuses one malformed event).
    RejectMarked,
    /// This 3xx for the ingest path, with a `Location` on this listener (credentials
    /// in it, which must never be shown) whose path answers 200 to anything: a client
    /// that follows redirects would think its events delivered.
    Redirect(u16),
}

/// The password in [`Mode::Redirect`]'s `Location`.
pub const REDIRECT_SECRET: &str = "hunter2-in-location";

/// What [`Mode::RejectMarked`] looks for.
pub const REJECT_MARK: &str = "REJECT-ME";

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub auth: Option<String>,
    pub encoding: Option<String>,
    pub content_type: Option<String>,
    pub idempotency_key: Option<String>,
    /// The status we answered.
    pub status: u16,
    /// When it arrived.
    pub at: std::time::Instant,
    /// The decoded JSON body, or why it could not be decoded.
    pub body: Result<Value, String>,
}

impl Received {
    /// The ids of the events in its body.
    pub fn event_ids(&self) -> Vec<String> {
        self.body
            .as_ref()
            .map(|b| {
                b["events"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

struct Shared {
    received: Mutex<Vec<Received>>,
    mode: Mutex<Mode>,
    token: String,
}

/// The listener; stops on drop.
pub struct Listener {
    port: u16,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn header(req: &tiny_http::Request, name: &str) -> Option<String> {
    req.headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str().to_string())
}

fn decode(raw: &[u8], encoding: Option<&str>) -> Result<Value, String> {
    let mut text = Vec::new();
    if encoding == Some("gzip") {
        flate2::read::GzDecoder::new(raw)
            .read_to_end(&mut text)
            .map_err(|e| format!("bad gzip: {e}"))?;
    } else {
        text = raw.to_vec();
    }
    serde_json::from_slice(&text).map_err(|e| format!("bad json: {e}"))
}

impl Listener {
    /// Starts on a free port, expecting `token`.
    pub fn start(token: &str) -> Listener {
        let shared = Arc::new(Shared {
            received: Mutex::new(Vec::new()),
            mode: Mutex::new(Mode::Ok),
            token: token.to_string(),
        });
        let mut l = Listener {
            port: 0,
            shared,
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        l.bind();
        l
    }

    fn bind(&mut self) {
        let sock = TcpListener::bind(("127.0.0.1", self.port)).expect("bind listener");
        self.port = sock.local_addr().expect("addr").port();
        let server = tiny_http::Server::from_listener(sock, None).expect("tiny_http");
        let port = self.port;
        self.stop = Arc::new(AtomicBool::new(false));
        let (stop, shared) = (self.stop.clone(), self.shared.clone());
        self.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok(Some(mut req)) = server.recv_timeout(Duration::from_millis(20)) else {
                    continue;
                };
                let mut raw = Vec::new();
                let _ = req.as_reader().read_to_end(&mut raw);
                let auth = header(&req, "Authorization");
                let encoding = header(&req, "Content-Encoding");
                let mode = *shared.mode.lock().expect("mode");
                let body = decode(&raw, encoding.as_deref());
                let marked = || {
                    body.as_ref().is_ok_and(|b| {
                        b["events"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|e| e.to_string().contains(REJECT_MARK))
                    })
                };
                let ingest = req.url().starts_with("/ingest");
                let (status, retry_after) = match mode {
                    Mode::Redirect(_) if !ingest => (200, None),
                    _ if auth.as_deref() != Some(&format!("Bearer {}", shared.token)) => {
                        (401, None)
                    }
                    Mode::Ok => (200, None),
                    Mode::Status(s) => (s, None),
                    Mode::RetryAfter(s, secs) => (s, Some(secs)),
                    Mode::RejectMarked if marked() => (400, None),
                    Mode::RejectMarked => (200, None),
                    Mode::Redirect(s) => (s, None),
                };
                let rec = Received {
                    at: std::time::Instant::now(),
                    path: req.url().to_string(),
                    body,
                    auth,
                    encoding,
                    content_type: header(&req, "Content-Type"),
                    idempotency_key: header(&req, "Idempotency-Key"),
                    status,
                };
                shared.received.lock().expect("received").push(rec);
                let mut resp = tiny_http::Response::from_string("{}").with_status_code(status);
                if let Some(secs) = retry_after {
                    resp = resp.with_header(
                        tiny_http::Header::from_bytes("Retry-After", secs.to_string())
                            .expect("header"),
                    );
                }
                if let (Mode::Redirect(_), true) = (mode, ingest) {
                    let to = format!("http://user:{REDIRECT_SECRET}@127.0.0.1:{port}/elsewhere");
                    resp = resp.with_header(
                        tiny_http::Header::from_bytes("Location", to).expect("header"),
                    );
                }
                let _ = req.respond(resp);
            }
        }));
    }

    /// Waits (30 s at most) for a first request: the agent runs and ships.
    pub fn wait_first_request(&self) {
        crate::harness::wait_for("a first batch", Duration::from_secs(30), || {
            (!self.received().is_empty()).then_some(())
        });
    }

    /// The ingest URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/ingest/postgres", self.port)
    }

    /// Changes how requests are answered.
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().expect("mode") = mode;
    }

    /// Closes the socket: connections are refused until [`Listener::restart`].
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Listens again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.bind();
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().expect("received").clone()
    }

    /// Events of accepted (2xx) requests, each with its batch id.
    pub fn accepted_events(&self) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for r in self.received() {
            let Ok(body) = &r.body else { continue };
            if !(200..300).contains(&r.status) {
                continue;
            }
            let batch = body["batch_id"].as_str().unwrap_or_default().to_string();
            for e in body["events"].as_array().into_iter().flatten() {
                out.push((batch.clone(), e.clone()));
            }
        }
        out
    }

    /// Accepted events of one kind.
    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.accepted_events()
            .into_iter()
            .map(|(_, e)| e)
            .filter(|e| e["kind"] == kind)
            .collect()
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop();
    }
}
