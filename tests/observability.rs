//! Dashboards and alert rules use only metric names ferry declares and exports, and the alert
//! rules pass promtool's checks and unit tests.

use std::path::{Path, PathBuf};

use ferry::metrics::names::{ALL, MetricKind};

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, out);
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("json" | "yaml" | "yml")) {
            out.push(path);
        }
    }
}

/// Every `ferry_...` identifier in `text`.
fn metric_tokens(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(pos) = text[i..].find("ferry_") {
        let start = i + pos;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end =
            start + text[start..].bytes().take_while(|b| b.is_ascii_alphanumeric() || *b == b'_').count();
        if boundary {
            out.push(text[start..end].to_string());
        }
        i = end.max(start + 1);
    }
    out
}

fn exported_names() -> Vec<String> {
    let mut names = Vec::new();
    for m in ALL {
        names.push(m.exposed());
        if m.kind == MetricKind::Counter {
            names.push(format!("{}_created", m.name));
        }
    }
    names
}

#[test]
fn dashboards_use_only_declared_metrics() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    files_under(&root.join("grafana"), &mut files);
    files_under(&root.join("helm"), &mut files);
    assert!(!files.is_empty(), "expected at least one dashboard under grafana/");
    let exported = exported_names();
    let mut used = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        if file.extension().is_some_and(|e| e == "json") {
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", file.display()));
        }
        for token in metric_tokens(&text) {
            assert!(
                exported.contains(&token),
                "{} uses `{token}`, which ferry does not export (declared: {exported:?})",
                file.display()
            );
            used += 1;
        }
    }
    assert!(used > 0, "the dashboards reference no ferry metric at all");
}

#[test]
fn token_scan_finds_names_and_ignores_embedded_ones() {
    assert_eq!(
        metric_tokens("rate(ferry_process_cpu_seconds_total[5m]) / my_ferry_x + ferry_up"),
        ["ferry_process_cpu_seconds_total", "ferry_up"]
    );
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/prometheus");
    for args in [["check", "rules", "ferry-alerts.yaml"], ["test", "rules", "ferry-alerts.test.yaml"]] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool (package prometheus; scripts/setup installs it)");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
