//! docs/errors.md must document every error code the proxy can produce, with the same
//! status, gRPC status, class and retryability as the code.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use outrigger_proxy::error::{ALL_SPECS, example_kinds};
use outrigger_proxy::{ErrorKind, ProxyError};

#[test]
fn every_error_code_has_a_row_and_a_section_in_docs_errors_md() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/errors.md")).unwrap();
    for spec in ALL_SPECS {
        let code = spec.code;
        let e = ProxyError::new(example_kinds().into_iter().find(|k| k.spec().code == code).unwrap());
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{code}` |")))
            .unwrap_or_else(|| panic!("no table row for {code}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        match spec.status {
            Some(s) => assert_eq!(cells[2], s.to_string(), "{code}: HTTP status"),
            None => assert!(
                cells[2].starts_with('('),
                "{code}: configured/kept status shown in parentheses"
            ),
        }
        match spec.grpc {
            Some(g) => assert!(cells[3].ends_with(&format!("({g})")), "{code}: gRPC status in {row}"),
            None => assert!(cells[3].starts_with("from status"), "{code}: {row}"),
        }
        assert_eq!(cells[4], e.class().as_str(), "{code}: class");
        let retry = if matches!(e.kind, ErrorKind::UpstreamError { .. }) {
            "status-dependent"
        } else if e.retryable() {
            "yes"
        } else {
            "no"
        };
        assert_eq!(cells[5], retry, "{code}: retryable");
        assert!(doc.contains(&format!("\n## {code}\n")), "no section for {code}");
    }
}
