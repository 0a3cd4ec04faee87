//! Typed, error-naming access to the fields of a JSON payload.
//!
//! Every accessor returns a [`FeedError::Field`] that names the feed, the
//! station (once known) and the field, so that a rejected payload says exactly
//! what was wrong with it.

use super::{FeedError, FeedKind, Problem, StationId, MAX_PAYLOAD_BYTES};
use serde_json::{Map, Value};

/// Checks the size, then parses. serde_json's recursion limit turns hostile
/// nesting into an error rather than a stack overflow.
pub(crate) fn parse_payload(feed: FeedKind, bytes: &[u8]) -> Result<Value, FeedError> {
    if bytes.len() > MAX_PAYLOAD_BYTES {
        return Err(FeedError::TooLarge {
            feed,
            size: bytes.len(),
            limit: MAX_PAYLOAD_BYTES,
        });
    }
    // Some servers put a UTF-8 byte-order mark before the JSON.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    serde_json::from_slice(bytes).map_err(|source| FeedError::Json { feed, source })
}

pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a fractional number",
        Value::Number(n) if n.is_i64() && n.as_i64().is_some_and(|i| i < 0) => "a negative number",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Where we are in a payload: which feed, which station.
#[derive(Clone, Debug)]
pub(crate) struct Ctx {
    pub(crate) feed: FeedKind,
    pub(crate) station: Option<String>,
}

impl Ctx {
    pub(crate) fn new(feed: FeedKind) -> Self {
        Ctx {
            feed,
            station: None,
        }
    }

    pub(crate) fn at_station(&self, station: impl Into<String>) -> Self {
        Ctx {
            feed: self.feed,
            station: Some(station.into()),
        }
    }

    pub(crate) fn err(&self, field: impl Into<String>, problem: Problem) -> FeedError {
        FeedError::Field {
            feed: self.feed,
            station: self.station.clone(),
            field: field.into(),
            problem,
        }
    }

    pub(crate) fn wrong(&self, field: &str, expected: &'static str, found: &Value) -> FeedError {
        self.err(
            field,
            Problem::WrongType {
                expected,
                found: type_name(found),
            },
        )
    }

    pub(crate) fn outage(&self, reason: impl Into<String>) -> FeedError {
        FeedError::UpstreamOutage {
            feed: self.feed,
            reason: reason.into(),
        }
    }

    pub(crate) fn object<'a>(
        &self,
        field: &str,
        v: &'a Value,
    ) -> Result<&'a Map<String, Value>, FeedError> {
        v.as_object()
            .ok_or_else(|| self.wrong(field, "an object", v))
    }

    pub(crate) fn array<'a>(&self, field: &str, v: &'a Value) -> Result<&'a Vec<Value>, FeedError> {
        v.as_array().ok_or_else(|| self.wrong(field, "an array", v))
    }

    /// A required field: present and not null.
    pub(crate) fn req<'a>(
        &self,
        obj: &'a Map<String, Value>,
        field: &str,
    ) -> Result<&'a Value, FeedError> {
        match obj.get(field) {
            None => Err(self.err(field, Problem::Missing)),
            Some(Value::Null) => Err(self.err(field, Problem::Null)),
            Some(v) => Ok(v),
        }
    }

    /// The first of several names a required field goes by.
    pub(crate) fn req_any<'a>(
        &self,
        obj: &'a Map<String, Value>,
        names: &[&'static str],
    ) -> Result<(&'static str, &'a Value), FeedError> {
        for name in names {
            if let Some(v) = opt(obj, name) {
                return Ok((name, v));
            }
        }
        // Name the canonical field; say null if it is there but null.
        self.req(obj, names[0]).map(|v| (names[0], v))
    }

    pub(crate) fn count(&self, field: &str, v: &Value) -> Result<u32, FeedError> {
        let Value::Number(n) = v else {
            return Err(self.wrong(field, "a non-negative integer", v));
        };
        if let Some(u) = n.as_u64() {
            return u32::try_from(u)
                .map_err(|_| self.err(field, Problem::OutOfRange(u.to_string())));
        }
        if let Some(i) = n.as_i64() {
            return Err(self.err(field, Problem::Negative(i.to_string())));
        }
        // A float: accept an integral one (some exporters write 3.0), refuse the rest.
        match n.as_f64() {
            Some(f) if f < 0.0 => Err(self.err(field, Problem::Negative(n.to_string()))),
            Some(f) if f.fract() == 0.0 && f <= f64::from(u32::MAX) => Ok(f as u32),
            Some(f) if f.fract() == 0.0 => Err(self.err(field, Problem::OutOfRange(n.to_string()))),
            _ => Err(self.wrong(field, "a non-negative integer", v)),
        }
    }

    pub(crate) fn req_count(
        &self,
        obj: &Map<String, Value>,
        field: &str,
    ) -> Result<u32, FeedError> {
        self.count(field, self.req(obj, field)?)
    }

    pub(crate) fn opt_count(
        &self,
        obj: &Map<String, Value>,
        field: &str,
    ) -> Result<Option<u32>, FeedError> {
        opt(obj, field).map(|v| self.count(field, v)).transpose()
    }

    /// An optional count that only advises (a `ttl`): one that is not a
    /// count is logged and ignored, not a reason to refuse the payload's
    /// stations.
    pub(crate) fn advisory_count(&self, obj: &Map<String, Value>, field: &str) -> Option<u32> {
        match self.opt_count(obj, field) {
            Ok(count) => count,
            Err(e) => {
                tracing::warn!("{e}: ignored, as if absent (it only advises)");
                None
            }
        }
    }

    /// A GBFS boolean in any form feeds write it: `true`/`false`, `1`/`0`,
    /// or the Paris export's `"OUI"`/`"NON"`.
    pub(crate) fn flag(&self, field: &str, v: &Value) -> Result<bool, FeedError> {
        const EXPECTED: &str = "a boolean (true/false, 1/0 or \"OUI\"/\"NON\")";
        match v {
            Value::Bool(b) => Ok(*b),
            Value::Number(n) => match n.as_u64() {
                Some(0) => Ok(false),
                Some(1) => Ok(true),
                _ => Err(self.err(field, Problem::OutOfRange(format!("{n}, expected 0 or 1")))),
            },
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "oui" | "yes" => Ok(true),
                "false" | "0" | "non" | "no" => Ok(false),
                _ => Err(self.err(
                    field,
                    Problem::OutOfRange(format!("{s:?}, expected {EXPECTED}")),
                )),
            },
            _ => Err(self.wrong(field, EXPECTED, v)),
        }
    }

    pub(crate) fn req_flag(
        &self,
        obj: &Map<String, Value>,
        field: &str,
    ) -> Result<bool, FeedError> {
        self.flag(field, self.req(obj, field)?)
    }

    pub(crate) fn station_id(&self, field: &str, v: &Value) -> Result<StationId, FeedError> {
        match v {
            Value::Number(n) => match n.as_u64() {
                Some(u) => Ok(StationId::Num(u)),
                None => Err(self.wrong(field, "a non-negative integer or a string", v)),
            },
            Value::String(s) if s.trim().is_empty() => {
                Err(self.err(field, Problem::OutOfRange("empty string".into())))
            }
            Value::String(s) => Ok(StationId::Text(s.clone())),
            _ => Err(self.wrong(field, "a non-negative integer or a string", v)),
        }
    }

    /// A short text such as a station code; numbers are accepted as their
    /// decimal text. Empty strings count as absent.
    pub(crate) fn opt_code(
        &self,
        obj: &Map<String, Value>,
        field: &str,
    ) -> Result<Option<String>, FeedError> {
        match opt(obj, field) {
            None => Ok(None),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
            Some(Value::Number(n)) if n.is_u64() => Ok(Some(n.to_string())),
            Some(v) => Err(self.wrong(field, "a string", v)),
        }
    }

    pub(crate) fn coordinate(&self, field: &str, v: &Value, bound: f64) -> Result<f64, FeedError> {
        let f = v.as_f64().ok_or_else(|| self.wrong(field, "a number", v))?;
        if !f.is_finite() || f.abs() > bound {
            return Err(self.err(field, Problem::OutOfRange(f.to_string())));
        }
        Ok(f)
    }

    /// A time: POSIX seconds (v1, v2, Vélib') or an RFC 3339 string (v3).
    pub(crate) fn time(&self, field: &str, v: &Value) -> Result<i64, FeedError> {
        match v {
            Value::Number(n) => n
                .as_i64()
                .filter(|t| *t >= 0)
                .ok_or_else(|| self.wrong(field, "POSIX seconds or an RFC 3339 string", v)),
            Value::String(s) => match super::parse_rfc3339(s) {
                Some(t) if t >= 0 => Ok(t),
                // Before 1970: refused as POSIX seconds are.
                Some(_) => {
                    Err(self.err(field, Problem::OutOfRange(format!("{s:?} is before 1970"))))
                }
                None => Err(self.err(
                    field,
                    Problem::OutOfRange(format!("{s:?} is not an RFC 3339 time")),
                )),
            },
            _ => Err(self.wrong(field, "POSIX seconds or an RFC 3339 string", v)),
        }
    }
}

/// An optional field: absent and null both mean "not given".
pub(crate) fn opt<'a>(obj: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
    obj.get(field).filter(|v| !v.is_null())
}
