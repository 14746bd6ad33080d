//! docs/errors.md must document every error code the proxy can produce, with the same
//! status, gRPC status and class as the code.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use std::time::Duration;

use outrigger_proxy::{ErrorKind, ProxyError};

#[test]
fn every_error_code_has_a_row_and_a_section_in_docs_errors_md() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/errors.md")).unwrap();
    let kinds = [
        ErrorKind::BadRequest { reason: "x" },
        ErrorKind::RouteNotFound,
        ErrorKind::HeaderTooLarge { limit: 1 },
        ErrorKind::UpstreamConnectFailed { reason: "x".into() },
        ErrorKind::UpstreamReset,
        ErrorKind::UpstreamProtocolError,
        ErrorKind::UpstreamTimeout {
            after: Duration::from_secs(1),
        },
        ErrorKind::CircuitOpen {
            retry_after: Duration::from_secs(1),
            why: None,
        },
        ErrorKind::CircuitSaturated { limit: 1 },
        ErrorKind::NoHealthyEndpoints { known: 1 },
        ErrorKind::Overloaded { limit: 1 },
        ErrorKind::FaultInjected { status: 503 },
        ErrorKind::Internal,
    ];
    for kind in kinds {
        let e = ProxyError::new(kind);
        let code = e.code();
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{code}` |")))
            .unwrap_or_else(|| panic!("no table row for {code}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        if !matches!(e.kind, ErrorKind::FaultInjected { .. }) {
            assert_eq!(cells[2], e.status().as_str(), "{code}: HTTP status");
        }
        assert!(
            cells[3].ends_with(&format!("({})", e.grpc_status())),
            "{code}: gRPC status in {row}"
        );
        assert_eq!(cells[4], e.class().as_str(), "{code}: class");
        assert_eq!(cells[5], if e.retryable() { "yes" } else { "no" }, "{code}: retryable");
        assert!(doc.contains(&format!("\n## {code}\n")), "no section for {code}");
    }
}
