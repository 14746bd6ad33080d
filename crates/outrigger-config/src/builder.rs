//! A config written in code, for tests and tools: typed setters build the same document a
//! YAML file holds, which then goes through the one reader and validator every file goes
//! through, so a built config gets the same defaults and the same errors as a file.
//!
//! ```
//! use std::time::Duration;
//! use outrigger_config::builder::ConfigBuilder;
//! let config = ConfigBuilder::new()
//!     .upstream("app", &["127.0.0.1:8080".parse().unwrap()])
//!     .route("default", "/", "app")
//!     .route_timeout("default", Duration::from_secs(2))
//!     .build()
//!     .unwrap();
//! assert_eq!(config.routes[0].timeout, Duration::from_secs(2));
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::{Config, ConfigError};

/// A config under construction. Listeners bind 127.0.0.1 on a port the OS picks unless
/// told otherwise; admin likewise; the drain is short (`delay: 0s`, `timeout: 5s`).
#[derive(Clone, Debug)]
pub struct ConfigBuilder {
    listeners: Vec<Value>,
    upstreams: Map<String, Value>,
    routes: Vec<Value>,
    top: Map<String, Value>,
}

impl Default for ConfigBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// A duration as the config file writes it.
fn duration(d: Duration) -> Value {
    Value::String(format!("{}ms", d.as_millis()))
}

impl ConfigBuilder {
    /// One inbound listener (`inbound`, 127.0.0.1 port 0), admin on 127.0.0.1 port 0.
    pub fn new() -> Self {
        let mut top = Map::new();
        top.insert("admin".into(), json!({"address": "127.0.0.1:0"}));
        top.insert("drain".into(), json!({"delay": "0s", "timeout": "5s"}));
        ConfigBuilder {
            listeners: vec![json!({"name": "inbound", "address": "127.0.0.1:0"})],
            upstreams: Map::new(),
            routes: Vec::new(),
            top,
        }
    }

    /// Adds a listener (`role: outbound` when `outbound`).
    pub fn listener(mut self, name: &str, address: SocketAddr, outbound: bool) -> Self {
        let role = if outbound { "outbound" } else { "inbound" };
        self.listeners
            .push(json!({"name": name, "address": address.to_string(), "role": role}));
        self
    }

    /// Adds an upstream with these endpoints.
    pub fn upstream(mut self, name: &str, endpoints: &[SocketAddr]) -> Self {
        let eps: Vec<String> = endpoints.iter().map(ToString::to_string).collect();
        self.upstreams.insert(name.into(), json!({"endpoints": eps}));
        self
    }

    /// Sets an upstream's setting, as the file writes it (`"protocol"`, `json!("http2")`).
    pub fn upstream_set(mut self, name: &str, key: &str, value: Value) -> Self {
        if let Some(Value::Object(u)) = self.upstreams.get_mut(name) {
            u.insert(key.into(), value);
        }
        self
    }

    /// Adds a route taking every path under `path_prefix` to `upstream`.
    pub fn route(mut self, name: &str, path_prefix: &str, upstream: &str) -> Self {
        self.routes.push(json!({
            "name": name,
            "match": {"path_prefix": path_prefix},
            "upstream": upstream,
        }));
        self
    }

    /// Sets a route's setting, as the file writes it (`"retry"`, `json!({"attempts": 3})`).
    pub fn route_set(mut self, name: &str, key: &str, value: Value) -> Self {
        if let Some(Value::Object(r)) = self.routes.iter_mut().find(|r| r["name"] == name) {
            r.insert(key.into(), value);
        }
        self
    }

    /// A route's `timeout`.
    pub fn route_timeout(self, name: &str, timeout: Duration) -> Self {
        self.route_set(name, "timeout", duration(timeout))
    }

    /// A route's `body_idle_timeout`.
    pub fn route_body_idle_timeout(self, name: &str, idle: Duration) -> Self {
        self.route_set(name, "body_idle_timeout", duration(idle))
    }

    /// Sets a top-level section (`"telemetry"`, `"errors"`), as the file writes it.
    pub fn set(mut self, section: &str, value: Value) -> Self {
        self.top.insert(section.into(), value);
        self
    }

    /// The document as a config file would hold it (JSON is YAML's flow syntax).
    pub fn to_yaml(&self) -> String {
        let mut doc = self.top.clone();
        doc.insert("listeners".into(), Value::Array(self.listeners.clone()));
        doc.insert("upstreams".into(), Value::Object(self.upstreams.clone()));
        doc.insert("routes".into(), Value::Array(self.routes.clone()));
        Value::Object(doc).to_string()
    }

    /// The validated config, or every problem the file reader found.
    pub fn build(&self) -> Result<Config, ConfigError> {
        crate::from_yaml(&self.to_yaml(), "<built in code>", &|_| None)
    }
}
