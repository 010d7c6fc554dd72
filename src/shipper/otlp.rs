//! The OTLP output: a batch becomes one OTLP/HTTP `ExportLogsServiceRequest` (protobuf,
//! gzip) with one log record per event, POSTed to `<endpoint>/v1/logs`.
//!
//! What a record carries: the body is the event's data as a map (keys whose value is
//! null are left out); `event_name` is the event kind; attributes name the kind, the
//! event id (stable across retries, for de-duplication), the correlation id, the query
//! id, the database and, for server log events, severity and SQLSTATE; the record's
//! severity follows PostgreSQL's; a `trace_id`/`span_id` the event took from a
//! `traceparent` becomes the record's trace context, so a tracing backend shows it
//! under the request's span. The resource names the service, host, project and (once a
//! collector learnt it) the PostgreSQL version.
//!
//! The messages are the subset of opentelemetry-proto v1 (`collector/logs/v1`,
//! `logs/v1`, `common/v1`, `resource/v1`) the agent writes, with the same field numbers.

use std::cell::Cell;

use chrono::{DateTime, Utc};
use prost::Message;
use serde_json::Value;
use slog::{warn, Logger};

use super::policy::retry_after;
use super::post::location_text;
use super::transport::{verdict, SendError, SendFuture, Transport};
use super::{encode_body, Answer, Origin};
use crate::config::{Compression, OtlpConfig, Secret};
use crate::model::{Batch, Event};

/// The longest answer body read (a partial-success message).
const MAX_ANSWER: usize = 64 * 1024;
/// The longest receiver message repeated in the log.
const MAX_MESSAGE: usize = 300;

/// `opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest`.
#[derive(Clone, PartialEq, Message)]
pub struct ExportLogsServiceRequest {
    /// One resource: this agent.
    #[prost(message, repeated, tag = "1")]
    pub resource_logs: Vec<ResourceLogs>,
}

/// `…ExportLogsServiceResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct ExportLogsServiceResponse {
    /// Set when some records were rejected.
    #[prost(message, optional, tag = "1")]
    pub partial_success: Option<ExportLogsPartialSuccess>,
}

/// `…ExportLogsPartialSuccess`.
#[derive(Clone, PartialEq, Message)]
pub struct ExportLogsPartialSuccess {
    /// Records the receiver dropped.
    #[prost(int64, tag = "1")]
    pub rejected_log_records: i64,
    /// Why.
    #[prost(string, tag = "2")]
    pub error_message: String,
}

/// `opentelemetry.proto.logs.v1.ResourceLogs`.
#[derive(Clone, PartialEq, Message)]
pub struct ResourceLogs {
    /// Who sends.
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    /// The records, under one scope.
    #[prost(message, repeated, tag = "2")]
    pub scope_logs: Vec<ScopeLogs>,
}

/// `opentelemetry.proto.resource.v1.Resource`.
#[derive(Clone, PartialEq, Message)]
pub struct Resource {
    /// service.name, host.name, ….
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

/// `opentelemetry.proto.logs.v1.ScopeLogs`.
#[derive(Clone, PartialEq, Message)]
pub struct ScopeLogs {
    /// The agent.
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    /// One per event.
    #[prost(message, repeated, tag = "2")]
    pub log_records: Vec<LogRecord>,
}

/// `opentelemetry.proto.common.v1.InstrumentationScope`.
#[derive(Clone, PartialEq, Message)]
pub struct InstrumentationScope {
    /// `postgres-agent`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The agent's version.
    #[prost(string, tag = "2")]
    pub version: String,
}

/// `opentelemetry.proto.logs.v1.LogRecord`.
#[derive(Clone, PartialEq, Message)]
pub struct LogRecord {
    /// When it happened (a server log line's own time; else when it was collected).
    #[prost(fixed64, tag = "1")]
    pub time_unix_nano: u64,
    /// `SeverityNumber`.
    #[prost(int32, tag = "2")]
    pub severity_number: i32,
    /// As PostgreSQL wrote it.
    #[prost(string, tag = "3")]
    pub severity_text: String,
    /// The event's data.
    #[prost(message, optional, tag = "5")]
    pub body: Option<AnyValue>,
    /// Kind, ids, database, ….
    #[prost(message, repeated, tag = "6")]
    pub attributes: Vec<KeyValue>,
    /// W3C trace flags (none known: 0).
    #[prost(fixed32, tag = "8")]
    pub flags: u32,
    /// 16 bytes, when the event carries a trace.
    #[prost(bytes = "vec", tag = "9")]
    pub trace_id: Vec<u8>,
    /// 8 bytes, when the event carries a trace.
    #[prost(bytes = "vec", tag = "10")]
    pub span_id: Vec<u8>,
    /// When the agent collected it.
    #[prost(fixed64, tag = "11")]
    pub observed_time_unix_nano: u64,
    /// The event kind.
    #[prost(string, tag = "12")]
    pub event_name: String,
}

/// `opentelemetry.proto.common.v1.KeyValue`.
#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    /// Name.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Value.
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

/// `opentelemetry.proto.common.v1.AnyValue`.
#[derive(Clone, PartialEq, Message)]
pub struct AnyValue {
    /// One of the kinds; none for null.
    #[prost(oneof = "any_value::Value", tags = "1, 2, 3, 4, 5, 6")]
    pub value: Option<any_value::Value>,
}

/// The kinds of [`AnyValue`].
pub mod any_value {
    /// `AnyValue.value`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        /// Text.
        #[prost(string, tag = "1")]
        StringValue(String),
        /// Boolean.
        #[prost(bool, tag = "2")]
        BoolValue(bool),
        /// Integer.
        #[prost(int64, tag = "3")]
        IntValue(i64),
        /// Number.
        #[prost(double, tag = "4")]
        DoubleValue(f64),
        /// List.
        #[prost(message, tag = "5")]
        ArrayValue(super::ArrayValue),
        /// Map.
        #[prost(message, tag = "6")]
        KvlistValue(super::KeyValueList),
    }
}

/// `opentelemetry.proto.common.v1.ArrayValue`.
#[derive(Clone, PartialEq, Message)]
pub struct ArrayValue {
    /// Items.
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<AnyValue>,
}

/// `opentelemetry.proto.common.v1.KeyValueList`.
#[derive(Clone, PartialEq, Message)]
pub struct KeyValueList {
    /// Entries.
    #[prost(message, repeated, tag = "1")]
    pub values: Vec<KeyValue>,
}

fn text(s: impl Into<String>) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.into())),
    }
}

fn kv(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(value),
    }
}

/// JSON as an OTLP value; `None` for null (left out of maps).
pub fn any(v: Value) -> Option<AnyValue> {
    parse_any(&v.to_string()).ok().flatten()
}

/// JSON text as an OTLP value, read straight into it (no intermediate tree: this is
/// the output's main cost per event); `None` for null.
pub fn parse_any(json: &str) -> Result<Option<AnyValue>, serde_json::Error> {
    use serde::Deserializer;
    let mut d = serde_json::Deserializer::from_str(json);
    let v = (&mut d).deserialize_any(AnyVisitor)?;
    d.end()?;
    Ok(v)
}

struct AnyVisitor;

impl<'de> serde::de::DeserializeSeed<'de> for AnyVisitor {
    type Value = Option<AnyValue>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(AnyVisitor)
    }
}

fn some(v: any_value::Value) -> Option<AnyValue> {
    Some(AnyValue { value: Some(v) })
}

impl<'de> serde::de::Visitor<'de> for AnyVisitor {
    type Value = Option<AnyValue>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(some(any_value::Value::BoolValue(b)))
    }

    fn visit_i64<E>(self, i: i64) -> Result<Self::Value, E> {
        Ok(some(any_value::Value::IntValue(i)))
    }

    fn visit_u64<E>(self, u: u64) -> Result<Self::Value, E> {
        // Above i64: as text, exactly (a double would round it).
        Ok(some(match i64::try_from(u) {
            Ok(i) => any_value::Value::IntValue(i),
            Err(_) => any_value::Value::StringValue(u.to_string()),
        }))
    }

    fn visit_f64<E>(self, f: f64) -> Result<Self::Value, E> {
        Ok(some(any_value::Value::DoubleValue(f)))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(some(any_value::Value::StringValue(s.to_string())))
    }

    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(some(any_value::Value::StringValue(s)))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(AnyVisitor)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        let mut values = Vec::with_capacity(a.size_hint().unwrap_or(0));
        while let Some(v) = a.next_element_seed(AnyVisitor)? {
            // A null inside a list keeps its place.
            values.push(v.unwrap_or_default());
        }
        Ok(some(any_value::Value::ArrayValue(ArrayValue { values })))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
        let mut values = Vec::with_capacity(a.size_hint().unwrap_or(0));
        while let Some(key) = a.next_key::<String>()? {
            if let Some(v) = a.next_value_seed(AnyVisitor)? {
                values.push(KeyValue {
                    key,
                    value: Some(v),
                });
            }
        }
        Ok(some(any_value::Value::KvlistValue(KeyValueList { values })))
    }
}

/// OTel's `SeverityNumber` for a PostgreSQL severity, and for the agent's own events.
pub fn severity(pg: &str) -> i32 {
    match pg {
        "DEBUG5" => 1,
        "DEBUG4" => 2,
        "DEBUG3" => 3,
        "DEBUG2" => 5,
        "DEBUG1" | "DEBUG" => 6,
        "LOG" => 9,
        "INFO" => 10,
        "NOTICE" => 11,
        "WARNING" | "WARN" => 13,
        "ERROR" => 17,
        "FATAL" => 21,
        "PANIC" => 24,
        _ => 0,
    }
}

/// `hex` as bytes when it is exactly `n` lowercase hex digits and not all zeros (as
/// W3C Trace Context requires); anything else is no trace.
fn trace_bytes(hex: Option<&str>, n: usize) -> Vec<u8> {
    let Some(h) = hex else {
        return Vec::new();
    };
    if h.len() != n
        || !h
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        || h.bytes().all(|b| b == b'0')
    {
        return Vec::new();
    }
    (0..n / 2)
        .filter_map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok())
        .collect()
}

fn nanos(t: DateTime<Utc>) -> u64 {
    t.timestamp_nanos_opt().unwrap_or_default().max(0) as u64
}

/// The attribute names of a record (documented in the README).
pub mod attr {
    /// The event kind (`pg_log`, `pg_activity`, …).
    pub const KIND: &str = "postgres_agent.kind";
    /// The event id (the same when a batch is retried).
    pub const EVENT_ID: &str = "postgres_agent.event_id";
    /// The request the event belongs to.
    pub const CORRELATION_ID: &str = "postgres_agent.correlation_id";
    /// PostgreSQL's query id.
    pub const QUERY_ID: &str = "postgres_agent.query_id";
    /// The database.
    pub const DATABASE: &str = "db.namespace";
    /// PostgreSQL's severity of a server log event.
    pub const SEVERITY: &str = "postgres_agent.severity";
    /// SQLSTATE of a server log event.
    pub const SQLSTATE: &str = "db.response.status_code";
    /// The configured name of the server the event is about (none on the agent's own).
    pub const SERVER: &str = "postgres_agent.server";
}

/// One event as a log record. Data that is not a JSON object (never written by the
/// agent) goes into the body as it is.
pub fn record(origin: &Origin, e: &Event) -> LogRecord {
    LogRecord {
        body: parse_any(e.data.get()).ok().flatten(),
        ..meta(origin, e)
    }
}

/// The keys of an event's data a record's fields and attributes come from; every other
/// key is skipped unread.
#[derive(Default, serde::Deserialize)]
struct Known {
    correlation_id: Option<Value>,
    query_id: Option<Value>,
    database: Option<Value>,
    datname: Option<Value>,
    severity: Option<Value>,
    sqlstate: Option<Value>,
    timestamp: Option<Value>,
    trace_id: Option<Value>,
    span_id: Option<Value>,
}

/// Everything of a record but its body.
fn meta(origin: &Origin, e: &Event) -> LogRecord {
    // Data that is not an object (never written by the agent) has none of these.
    let k: Known = serde_json::from_str(e.data.get()).unwrap_or_default();
    let text_of = |v: &Option<Value>| v.as_ref().and_then(Value::as_str).map(str::to_string);
    let mut attributes = vec![
        kv(attr::KIND, text(e.kind.as_str())),
        kv(attr::EVENT_ID, text(&e.id)),
    ];
    if let Some(server) = super::server_of(origin, e) {
        attributes.push(kv(attr::SERVER, text(server)));
        let project = origin.project_of(Some(server));
        if project != origin.project {
            attributes.push(kv("postgres_agent.project", text(project)));
        }
    }
    let database = k
        .database
        .clone()
        .filter(|v| !v.is_null())
        .or(k.datname.clone());
    for (name, v) in [
        (attr::CORRELATION_ID, k.correlation_id.clone()),
        (attr::QUERY_ID, k.query_id.clone()),
        (attr::DATABASE, database),
        (attr::SEVERITY, k.severity.clone()),
        (attr::SQLSTATE, k.sqlstate.clone()),
    ] {
        if let Some(v) = v.and_then(any) {
            attributes.push(kv(name, v));
        }
    }
    let pg_severity = text_of(&k.severity).unwrap_or_default();
    let (severity_number, severity_text) = match (e.kind, pg_severity.as_str()) {
        (_, s) if severity(s) > 0 => (severity(s), s.to_string()),
        (crate::model::EventKind::Agent, _) => (9, "INFO".to_string()),
        _ => (0, String::new()),
    };
    // A server log line's own time; otherwise the time of collection.
    let time = text_of(&k.timestamp)
        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or(e.collected_at);
    let trace_id = trace_bytes(text_of(&k.trace_id).as_deref(), 32);
    // A span id alone names no trace.
    let span_id = if trace_id.is_empty() {
        Vec::new()
    } else {
        trace_bytes(text_of(&k.span_id).as_deref(), 16)
    };
    LogRecord {
        time_unix_nano: nanos(time),
        observed_time_unix_nano: nanos(e.collected_at),
        severity_number,
        severity_text,
        attributes,
        flags: 0,
        trace_id,
        span_id,
        event_name: e.kind.as_str().to_string(),
        body: None,
    }
}

fn resource(origin: &Origin, service: &str) -> Resource {
    let mut attributes = vec![
        kv("service.name", text(service)),
        kv("service.instance.id", text(&origin.host)),
        kv("host.name", text(&origin.host)),
        kv("db.system.name", text("postgresql")),
        kv("postgres_agent.project", text(&origin.project)),
        kv("postgres_agent.version", text(crate::VERSION)),
    ];
    // Several servers' records share the resource: one server's version is not theirs.
    if let Some(v) = origin.server.version().filter(|_| !origin.fleet) {
        attributes.push(kv("db.server.version", text(v)));
    }
    Resource { attributes }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "postgres-agent".into(),
        version: crate::VERSION.into(),
    }
}

/// The request for a batch, as prost messages: the reference [`encode`] is tested
/// against (and what tests decode into).
pub fn request(origin: &Origin, service: &str, batch: &Batch) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource(origin, service)),
            scope_logs: vec![ScopeLogs {
                scope: Some(scope()),
                log_records: batch.events.iter().map(|e| record(origin, e)).collect(),
            }],
        }],
    }
}

/// The request for a batch as protobuf bytes, the same message as [`request`] encodes
/// to, written in one pass: each event's JSON is read straight into the bytes of its
/// body (prost would build the tree of values, then measure every nested message once
/// per level above it — most of the output's cost).
pub fn encode(origin: &Origin, service: &str, batch: &Batch) -> Vec<u8> {
    let size: usize = batch.events.iter().map(|e| e.data.get().len() + 200).sum();
    let mut buf = Vec::with_capacity(size + 512);
    let rl = pb::begin(&mut buf, 1);
    pb::message(&mut buf, 1, &resource(origin, service));
    let sl = pb::begin(&mut buf, 2);
    pb::message(&mut buf, 1, &scope());
    for e in &batch.events {
        let rec = pb::begin(&mut buf, 2);
        meta(origin, e).encode_raw(&mut buf);
        let body = pb::begin(&mut buf, 5);
        let mut d = serde_json::Deserializer::from_str(e.data.get());
        let written = serde::de::DeserializeSeed::deserialize(pb::Any(&mut buf), &mut d)
            .and_then(|w| d.end().map(|_| w));
        match written {
            Ok(true) => pb::end(&mut buf, body),
            // Null or not JSON (never written by the agent): no body, as `record`.
            _ => buf.truncate(body.key_at),
        }
        pb::end(&mut buf, rec);
    }
    pb::end(&mut buf, sl);
    pb::end(&mut buf, rl);
    buf
}

/// Writing protobuf by hand: length-delimited fields whose length is known only once
/// their content is written.
mod pb {
    use super::Message;

    /// A length-delimited field begun: where its key is and where its content starts.
    #[derive(Clone, Copy)]
    pub struct Open {
        pub key_at: usize,
        content_at: usize,
    }

    pub fn varint(buf: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        buf.push(v as u8);
    }

    fn key(buf: &mut Vec<u8>, field: u32, wire: u32) {
        varint(buf, u64::from(field << 3 | wire));
    }

    /// Writes field `field`'s key; its content follows, then [`end`].
    pub fn begin(buf: &mut Vec<u8>, field: u32) -> Open {
        let key_at = buf.len();
        key(buf, field, 2);
        Open {
            key_at,
            content_at: buf.len(),
        }
    }

    /// Puts the content's length between the key and the content.
    pub fn end(buf: &mut Vec<u8>, open: Open) {
        let mut len = (buf.len() - open.content_at) as u64;
        let mut l = [0u8; 10];
        let mut n = 0;
        while len >= 0x80 {
            l[n] = (len as u8) | 0x80;
            len >>= 7;
            n += 1;
        }
        l[n] = len as u8;
        buf.splice(open.content_at..open.content_at, l[..=n].iter().copied());
    }

    pub fn bytes(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
        key(buf, field, 2);
        varint(buf, b.len() as u64);
        buf.extend_from_slice(b);
    }

    pub fn message<M: Message>(buf: &mut Vec<u8>, field: u32, m: &M) {
        let o = begin(buf, field);
        m.encode_raw(buf);
        end(buf, o);
    }

    /// JSON read into the content of an `AnyValue`; `false` for null (nothing
    /// written). Maps leave out keys whose value is null, lists keep a null's place.
    pub struct Any<'a>(pub &'a mut Vec<u8>);

    impl<'de> serde::de::DeserializeSeed<'de> for Any<'_> {
        type Value = bool;

        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> serde::de::Visitor<'de> for Any<'_> {
        type Value = bool;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("JSON")
        }

        fn visit_bool<E>(self, b: bool) -> Result<bool, E> {
            key(self.0, 2, 0);
            varint(self.0, u64::from(b));
            Ok(true)
        }

        fn visit_i64<E>(self, i: i64) -> Result<bool, E> {
            key(self.0, 3, 0);
            varint(self.0, i as u64);
            Ok(true)
        }

        fn visit_u64<E: serde::de::Error>(self, u: u64) -> Result<bool, E> {
            match i64::try_from(u) {
                Ok(i) => self.visit_i64(i),
                // Above i64: as text, exactly.
                Err(_) => self.visit_str(&u.to_string()),
            }
        }

        fn visit_f64<E>(self, f: f64) -> Result<bool, E> {
            key(self.0, 4, 1);
            self.0.extend_from_slice(&f.to_le_bytes());
            Ok(true)
        }

        fn visit_str<E>(self, s: &str) -> Result<bool, E> {
            bytes(self.0, 1, s.as_bytes());
            Ok(true)
        }

        fn visit_unit<E>(self) -> Result<bool, E> {
            Ok(false)
        }

        fn visit_none<E>(self) -> Result<bool, E> {
            Ok(false)
        }

        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
            d.deserialize_any(self)
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<bool, A::Error> {
            let buf = self.0;
            let list = begin(buf, 5);
            loop {
                let item = begin(buf, 1);
                match a.next_element_seed(Any(&mut *buf))? {
                    // A null keeps its place: an empty value.
                    Some(_) => end(buf, item),
                    None => {
                        buf.truncate(item.key_at);
                        break;
                    }
                }
            }
            end(buf, list);
            Ok(true)
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<bool, A::Error> {
            let buf = self.0;
            let map = begin(buf, 6);
            while let Some(k) = a.next_key::<std::borrow::Cow<'de, str>>()? {
                let entry = begin(buf, 1);
                if !k.is_empty() {
                    bytes(buf, 1, k.as_bytes());
                }
                let value = begin(buf, 2);
                if a.next_value_seed(Any(&mut *buf))? {
                    end(buf, value);
                    end(buf, entry);
                } else {
                    buf.truncate(entry.key_at);
                }
            }
            end(buf, map);
            Ok(true)
        }
    }
}

/// A receiver's text as it may be repeated: printable, cut on a character boundary.
fn said(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match clean.char_indices().nth(MAX_MESSAGE) {
        Some((i, _)) => format!("{}…", &clean[..i]),
        None => clean,
    }
}

/// POSTs batches to an OTLP/HTTP receiver.
pub struct OtlpPost {
    client: awc::Client,
    url: String,
    headers: Vec<(String, Secret)>,
    compression: Compression,
    service: String,
    origin: Origin,
    log: Option<Logger>,
    /// Records receivers said they rejected (partial success) since start.
    pub rejected_total: Cell<u64>,
}

impl OtlpPost {
    /// A poster for `cfg`; build it on the thread that uses it.
    pub fn new(cfg: &OtlpConfig, origin: Origin) -> OtlpPost {
        let client = awc::Client::builder()
            .timeout(cfg.delivery.timeout)
            .disable_redirects()
            .add_default_header(("User-Agent", format!("postgres-agent/{}", crate::VERSION)))
            .finish();
        OtlpPost {
            client,
            url: cfg.url.clone().unwrap_or_default(),
            headers: cfg.headers.clone(),
            compression: cfg.delivery.compression,
            service: cfg.service_name.clone(),
            origin,
            log: None,
            rejected_total: Cell::new(0),
        }
    }

    /// Reports partial successes to `log`.
    pub fn logging(mut self, log: Logger) -> OtlpPost {
        self.log = Some(log);
        self
    }

    async fn post(&self, batch: &Batch) -> Result<u16, SendError> {
        let failed = |reason: String| SendError::Retriable {
            reason,
            status: None,
            retry_after: None,
        };
        let body = encode(&self.origin, &self.service, batch);
        let body = encode_body(body, self.compression)
            .map_err(|e| failed(format!("cannot compress batch: {e}")))?;
        let mut req = self
            .client
            .post(&self.url)
            .insert_header(("Content-Type", "application/x-protobuf"));
        for (name, value) in &self.headers {
            req = req.insert_header((name.as_str(), value.expose()));
        }
        if self.compression == Compression::Gzip {
            req = req.insert_header(("Content-Encoding", "gzip"));
        }
        let mut resp = req
            .send_body(body)
            .await
            .map_err(|e| failed(format!("request failed: {e}")))?;
        let header = |name: &str| resp.headers().get(name).map(|v| v.to_str());
        let status = resp.status().as_u16();
        let answer = Answer {
            status,
            retry_after: header("retry-after")
                .and_then(Result::ok)
                .and_then(|v| retry_after(v, Utc::now())),
            location: (300..400)
                .contains(&status)
                .then(|| location_text(header("location").map(|h| h.ok()))),
        };
        let verdict = verdict(&answer)?;
        // Accepted. A partial success names records the receiver dropped for good: it
        // is said (they are not sent again, as the protocol asks); a body that is not
        // a response is no reason to send the batch again.
        if let Ok(bytes) = resp.body().limit(MAX_ANSWER).await {
            if let Ok(r) = ExportLogsServiceResponse::decode(bytes.as_ref()) {
                if let Some(p) = r.partial_success.filter(|p| p.rejected_log_records > 0) {
                    let n = p.rejected_log_records as u64;
                    self.rejected_total.set(self.rejected_total.get() + n);
                    if let Some(log) = &self.log {
                        warn!(log, "otlp_records_rejected"; "records" => n, "events" => batch.events.len(),
                              "message" => said(&p.error_message), "batch_id" => &batch.batch_id);
                    }
                }
            }
        }
        Ok(verdict)
    }
}

impl Transport for OtlpPost {
    fn send<'a>(&'a self, batch: &'a Batch) -> SendFuture<'a> {
        Box::pin(self.post(batch))
    }
}

#[cfg(test)]
mod tests;
