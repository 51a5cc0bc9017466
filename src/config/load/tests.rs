use super::*;

const GOOD: &str = r#"
region: east
regions:
  east:
    priority: 1
    standby: west
    mysql:
      user: ferry
      password: pw
      gtid_domain_id: 1
      primary: { host: 127.0.0.1, port: 3306, server_id: 101 }
      replicas: [{ host: 127.0.0.2, server_id: 102 }]
    kafka: { bootstrap: ["127.0.0.1:9092"] }
    redis: { primary: "127.0.0.1:6379" }
  west:
    priority: 2
    mysql:
      user: ferry
      password: pw
      gtid_domain_id: 2
      primary: { host: 127.0.0.3, server_id: 201 }
    kafka: { bootstrap: ["127.0.0.1:9092"] }
http: { listen: "127.0.0.1:9464" }
shutdown: { grace: 10s }
"#;

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn paths(err: &ConfigErrors) -> Vec<&str> {
    err.problems.iter().map(|p| p.path.as_str()).collect()
}

#[test]
fn a_good_config_loads_with_defaults() {
    let c = load_str("good", GOOD, no_env()).expect("valid config");
    assert_eq!(c.region, "east");
    assert_eq!(c.regions["west"].mysql.primary.port, 3306, "default port");
    assert_eq!(c.shutdown.grace, std::time::Duration::from_secs(10));
    assert_eq!(c.tie_break_order(), vec!["east", "west"]);
    assert_eq!(c.regions["east"].mysql.password.expose(), "pw");
}

#[test]
fn every_problem_is_reported_at_once_with_its_path() {
    let bad = GOOD
        .replace("region: east", "region: north")
        .replace("server_id: 201", "server_id: 101")
        .replace("grace: 10s", "grace: 10 parsecs")
        .replace("standby: west", "standby: south\n    colour: blue")
        .replace("gtid_domain_id: 2", "gtid_domain_id: 1");
    let err = load_str("bad", &bad, no_env()).expect_err("must fail");
    let got = paths(&err);
    for want in [
        "regions.east.colour",
        "shutdown.grace",
        "region",
        "regions.east.standby",
        "regions.west.mysql.primary.server_id",
        "regions.west.mysql.gtid_domain_id",
    ] {
        assert!(got.contains(&want), "expected a problem at {want}; got {err}");
    }
    assert_eq!(got.len(), 6, "expected exactly 6 problems, got {err}");
    let text = err.to_string();
    assert!(text.contains("unknown field `colour`"), "{text}");
    assert!(text.contains("also used by regions.east.mysql.primary"), "{text}");
}

#[test]
fn a_pruned_region_does_not_cause_echo_problems() {
    // east's primary lacks server_id: the region is pruned, and `region: east` must not then be
    // reported as undefined.
    let bad = GOOD.replace("port: 3306, server_id: 101", "port: 3306");
    let err = load_str("bad", &bad, no_env()).expect_err("must fail");
    assert_eq!(paths(&err), vec!["regions.east.mysql.primary.server_id"], "{err}");
    assert_eq!(err.problems[0].message, "is required");
}

#[test]
fn a_bad_list_element_is_named_by_index() {
    let bad = GOOD.replace("server_id: 102", "server_id: lots");
    let err = load_str("bad", &bad, no_env()).expect_err("must fail");
    assert_eq!(paths(&err), vec!["regions.east.mysql.replicas[0].server_id"], "{err}");
}

#[test]
fn env_overrides_replace_and_add_keys() {
    let env = vec![
        ("FERRY__HTTP__LISTEN".to_string(), "0.0.0.0:9999".to_string()),
        ("FERRY__REGIONS__WEST__MYSQL__PRIMARY__PORT".to_string(), "3307".to_string()),
        ("FERRY__LOG__FORMAT".to_string(), "json".to_string()),
        ("UNRELATED".to_string(), "x".to_string()),
    ];
    let c = load_str("good", GOOD, env).expect("valid config");
    assert_eq!(c.http.listen.to_string(), "0.0.0.0:9999");
    assert_eq!(c.regions["west"].mysql.primary.port, 3307);
    assert_eq!(c.log.format, super::super::LogFormat::Json);
}

#[test]
fn a_bad_env_override_is_reported_under_its_path() {
    let env = vec![("FERRY__HTTP__LISTEN".to_string(), "nowhere".to_string())];
    let err = load_str("good", GOOD, env).expect_err("must fail");
    assert_eq!(paths(&err), vec!["http.listen"], "{err}");
    assert!(err.to_string().contains("(set by the environment variable FERRY__HTTP__LISTEN)"), "{err}");
    // A problem in the file itself is not attributed to a variable.
    let bad = GOOD.replacen("priority: 1", "priority: 2", 1);
    let env = vec![("FERRY__HTTP__LISTEN".to_string(), "127.0.0.1:9464".to_string())];
    let err = load_str("bad", &bad, env).expect_err("must fail");
    assert!(!err.to_string().contains("environment variable"), "{err}");
}

#[test]
fn a_missing_secret_variable_is_a_problem_at_its_path() {
    let bad = GOOD.replacen("password: pw", "password: { env: FERRY_TEST_NO_SUCH_VAR_7 }", 1);
    let err = load_str("bad", &bad, no_env()).expect_err("must fail");
    assert_eq!(paths(&err), vec!["regions.east.mysql.password"], "{err}");
    assert!(err.to_string().contains("FERRY_TEST_NO_SUCH_VAR_7"), "{err}");
}

#[test]
fn yaml_syntax_errors_are_reported_not_panicked() {
    let err = load_str("bad", "region: [east\n", no_env()).expect_err("must fail");
    assert_eq!(err.problems.len(), 1);
    assert!(err.problems[0].message.contains("not valid YAML"), "{err}");
}

#[test]
fn an_empty_document_lists_the_required_top_level_keys() {
    let err = load_str("empty", "", no_env()).expect_err("must fail");
    assert_eq!(paths(&err), vec!["region"], "{err}");
}

#[test]
fn flavors_require_their_origin_identity_and_the_capture_id_is_unique() {
    let bad = GOOD
        .replacen("      gtid_domain_id: 1\n", "", 1)
        .replace("gtid_domain_id: 2", "flavor: mysql\n      server_uuids: [not-a-uuid]")
        + "capture: { server_id: 102 }\n";
    let err = load_str("bad", &bad, no_env()).expect_err("must fail");
    assert_eq!(
        paths(&err),
        vec!["regions.east.mysql.gtid_domain_id", "regions.west.mysql.server_uuids[0]", "capture.server_id"],
        "{err}"
    );
    assert!(err.to_string().contains("also used by regions.east.mysql.replicas[0]"), "{err}");
    let good = GOOD.replace(
        "gtid_domain_id: 2",
        "flavor: mysql\n      server_uuids: [3E11FA47-71CA-11E1-9E33-C80AA9429562]",
    ) + "capture: { server_id: 1001 }\n";
    let config = load_str("good", &good, no_env()).expect("a MySQL region with UUIDs is valid");
    assert_eq!(
        config.regions["west"].mysql.origin_filter(),
        crate::model::OriginFilter::Uuids(vec!["3e11fa47-71ca-11e1-9e33-c80aa9429562".into()])
    );
}

#[test]
fn is_prefix_respects_segment_boundaries() {
    assert!(is_prefix("regions.east", "regions.east.mysql"));
    assert!(is_prefix("regions.east", "regions.east"));
    assert!(is_prefix("a.list", "a.list[0].x"));
    assert!(!is_prefix("regions.east", "regions.eastern"));
}

#[test]
fn conflict_rules_default_and_bad_table_rules_are_all_reported() {
    let c = load_str("good", GOOD, no_env()).expect("valid config");
    assert_eq!(c.conflicts.version_column, "updated_at");
    assert_eq!(c.conflicts.tombstone_horizon, std::time::Duration::from_secs(7 * 24 * 3600));
    let with = |tables: &str| format!("{GOOD}conflicts:\n  tables:\n{tables}");
    let ok = with(
        "    psi.stock: { delta_columns: [quantity, reserved] }\n    psi.log: { single_writer: east }\n",
    );
    let c = load_str("ok", &ok, no_env()).expect("valid config");
    assert_eq!(c.conflicts.table("psi", "stock").unwrap().delta_columns, vec!["quantity", "reserved"]);
    let bad = with(
        "    stock: { delta_columns: [q] }\n    psi.a: { single_writer: mars }\n    psi.b: { delta_columns: [q, q, updated_at] }\n",
    );
    let err = load_str("bad", &bad, no_env()).unwrap_err();
    assert_eq!(
        paths(&err),
        vec![
            "conflicts.tables.psi.a.single_writer",
            "conflicts.tables.psi.b.delta_columns[1]",
            "conflicts.tables.psi.b.delta_columns[2]",
            "conflicts.tables.stock",
        ],
        "{err}"
    );
}

#[test]
fn failover_settings_are_checked_against_the_probe_the_regions_and_dns() {
    let text = format!(
        "{GOOD}watch:\n  targets:\n\
         \x20   - name: db\n      probe: {{ tcp: {{ address: \"127.0.0.1:3306\" }} }}\n      failover: {{ primary: mysql, record: db.east }}\n\
         \x20   - name: other\n      probe: {{ tcp: {{ address: \"127.0.0.9:80\" }} }}\n      failover: {{ region: east }}\n\
         \x20   - name: both\n      probe: {{ redis: {{ address: \"127.0.0.1:6379\" }} }}\n      failover: {{ primary: redis, region: west }}\n\
         failover: {{ fence_timeout: 0s }}\n"
    );
    let err = load_str("failover", &text, no_env()).unwrap_err();
    assert_eq!(
        paths(&err),
        vec![
            "watch.targets[db].probe",
            "watch.targets[db].failover.record",
            "watch.targets[other].failover.region",
            "watch.targets[other].failover.ferry",
            "watch.targets[other].failover.region",
            "watch.targets[both].failover",
            "failover.fence_timeout",
        ],
        "{err}"
    );
    let good = format!(
        "{GOOD}watch:\n  targets:\n\
         \x20   - name: db\n      probe: {{ mysql: {{ address: \"127.0.0.1:3306\" }} }}\n      failover: {{ primary: mysql, record: db.east }}\n\
         \x20   - name: west\n      probe: {{ tcp: {{ address: \"127.0.0.9:80\" }} }}\n      failover: {{ region: west, ferry: \"127.0.0.3:9464\", confirm: 90s }}\n\
         failover:\n  dns: {{ server: \"127.0.0.1:53\", zone: psi.test, key_name: k, key: c2VjcmV0 }}\n"
    );
    // West's traffic goes to its standby, which must be named.
    let err = load_str("failover", &good, no_env()).unwrap_err();
    assert_eq!(paths(&err), vec!["watch.targets[west].failover.region"], "{err}");
    assert!(err.to_string().contains("regions.west.standby is not set"), "{err}");
    let standby = vec![("FERRY__REGIONS__WEST__STANDBY".to_string(), "east".to_string())];
    let c = load_str("failover", &good, standby).unwrap_or_else(|e| panic!("{e}"));
    let dns = c.failover.as_ref().and_then(|f| f.dns.as_ref()).unwrap();
    assert_eq!(dns.fqdn("db.east"), "db.east.psi.test");
    assert_eq!(dns.fqdn("db.east.psi.test."), "db.east.psi.test");
    assert_eq!(dns.services, ["app", "db", "redis"]);
    assert_eq!(c.failover.as_ref().unwrap().budget, crate::config::LossBudget::Transactions(0));
}

#[test]
fn every_secret_is_resolved_at_load_including_the_failover_ones() {
    let text = format!(
        "{GOOD}failover:\n  replication: {{ user: repl, password: {{ env: FERRY_TEST_NO_SUCH_VAR_8 }} }}\n  \
         dns: {{ server: \"127.0.0.1:53\", zone: psi.test, key_name: k, key: {{ file: /nonexistent/ferry-tsig }} }}\n"
    );
    let err = load_str("secrets", &text, no_env()).expect_err("unreadable secrets must fail");
    assert_eq!(paths(&err), vec!["failover.replication.password", "failover.dns.key"], "{err}");
    assert!(err.to_string().contains("FERRY_TEST_NO_SUCH_VAR_8"), "{err}");
    assert!(err.to_string().contains("/nonexistent/ferry-tsig"), "{err}");
}

#[test]
fn apply_schemas_may_not_name_system_schemas() {
    let text = format!("{GOOD}apply: {{ schemas: [psi, mysql, ferry, \"\"] }}\n");
    let err = load_str("schemas", &text, no_env()).expect_err("must fail");
    assert_eq!(paths(&err), vec!["apply.schemas[1]", "apply.schemas[2]", "apply.schemas[3]"], "{err}");
}

#[test]
fn the_loss_budget_is_a_number_or_any() {
    let any = format!("{GOOD}failover: {{ budget: any }}\n");
    let c = load_str("any", &any, no_env()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.failover.unwrap().budget, crate::config::LossBudget::Any(crate::config::AnyLoss::Any));
    let five = format!("{GOOD}failover: {{ budget: 5 }}\n");
    let c = load_str("five", &five, no_env()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.failover.unwrap().budget, crate::config::LossBudget::Transactions(5));
    let bad = format!("{GOOD}failover: {{ budget: lots }}\n");
    let err = load_str("bad", &bad, no_env()).expect_err("must fail");
    assert_eq!(paths(&err), vec!["failover.budget"], "{err}");
}

#[test]
fn a_problem_inside_a_probe_is_not_echoed_by_the_probe_as_a_whole() {
    let text = format!(
        "{GOOD}watch:\n  targets:\n    - name: db\n      probe: {{ mysql: {{ adress: \"127.0.0.1:3306\" }} }}\n"
    );
    let err = load_str("echo", &text, no_env()).expect_err("must fail");
    assert_eq!(
        paths(&err),
        vec!["watch.targets[0].probe.mysql.adress", "watch.targets[0].probe.mysql.address"],
        "{err}"
    );
    assert!(!err.to_string().contains("expected map with a single key"), "{err}");
}

/// The keys a section accepts, as the loader itself names them in its "unknown field" error
/// for a key `zzz_probe` put into that section (`env`: the variable that puts it there, or a
/// YAML text that already holds it).
fn accepted(text: &str, env: Vec<(String, String)>, at: &str) -> Vec<String> {
    let err = load_str("probe", text, env).expect_err("an unknown key is a problem");
    let problem = err
        .problems
        .iter()
        .find(|p| p.path == format!("{at}.zzz_probe").trim_start_matches('.'))
        .unwrap_or_else(|| panic!("no unknown-field problem at {at}: {err}"));
    let expected = problem.message.split("expected").nth(1).unwrap_or_default();
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(|k| if at.is_empty() { k.to_string() } else { format!("{at}.{k}") })
        .collect()
}

/// Every configuration key, section by section, as the structs accept them.
fn every_key() -> Vec<String> {
    let env_sections = [
        ("", ""),
        ("regions.<r>", "REGIONS__EAST"),
        ("regions.<r>.mysql", "REGIONS__EAST__MYSQL"),
        ("regions.<r>.mysql.primary", "REGIONS__EAST__MYSQL__PRIMARY"),
        ("regions.<r>.kafka", "REGIONS__EAST__KAFKA"),
        ("regions.<r>.redis", "REGIONS__EAST__REDIS"),
        ("http", "HTTP"),
        ("log", "LOG"),
        ("shutdown", "SHUTDOWN"),
        ("capture", "CAPTURE"),
        ("apply", "APPLY"),
        ("conflicts", "CONFLICTS"),
        ("conflicts.tables.<t>", "CONFLICTS__TABLES__PSI.STOCK"),
        ("watch", "WATCH"),
        ("watch.leader", "WATCH__LEADER"),
        ("watch.leader.kubernetes", "WATCH__LEADER__KUBERNETES"),
        ("watch.alertmanager", "WATCH__ALERTMANAGER"),
        ("watch.flap", "WATCH__FLAP"),
        ("failover", "FAILOVER"),
        ("failover.dns", "FAILOVER__DNS"),
        ("failover.replication", "FAILOVER__REPLICATION"),
        ("check", "CHECK"),
    ];
    let mut keys = Vec::new();
    for (at, var) in env_sections {
        let name =
            if var.is_empty() { "FERRY__ZZZ_PROBE".to_string() } else { format!("FERRY__{var}__ZZZ_PROBE") };
        let found =
            accepted(GOOD, vec![(name, "1".into())], &at.replace("<r>", "east").replace("<t>", "psi.stock"));
        keys.extend(
            found.into_iter().map(|k| k.replacen(".east", ".<r>", 1).replacen("psi.stock", "<t>", 1)),
        );
    }
    // Watch targets live in a list: the probe key goes in the YAML.
    let target = |inner: &str| format!("{GOOD}watch:\n  targets:\n    - {{ name: t, {inner} }}\n");
    let tcp = "probe: { tcp: { address: \"127.0.0.1:1\" } }";
    let mut yaml_sections = vec![
        ("watch.targets[]".to_string(), target(&format!("{tcp}, zzz_probe: 1"))),
        ("watch.targets[].failover".into(), target(&format!("{tcp}, failover: {{ zzz_probe: 1 }}"))),
        (
            "watch.targets[].failover.haproxy".into(),
            target(&format!("{tcp}, failover: {{ haproxy: {{ zzz_probe: 1 }} }}")),
        ),
    ];
    for kind in variants(&target("probe: { zzz_probe: {} }")) {
        yaml_sections.push((
            format!("watch.targets[].probe.{kind}"),
            target(&format!("probe: {{ {kind}: {{ zzz_probe: 1 }} }}")),
        ));
        keys.push(format!("watch.targets[].probe.{kind}"));
    }
    for kind in variants(&target(&format!("{tcp}, lb: {{ zzz_probe: {{}} }}"))) {
        yaml_sections.push((
            format!("watch.targets[].lb.{kind}"),
            target(&format!("{tcp}, lb: {{ {kind}: {{ zzz_probe: 1 }} }}")),
        ));
        keys.push(format!("watch.targets[].lb.{kind}"));
    }
    for (at, text) in yaml_sections {
        let found = accepted(&text, no_env(), &at.replace("[]", "[0]"));
        keys.extend(found.into_iter().map(|k| k.replacen("[0]", "[]", 1)));
    }
    keys
}

/// The variants an enum accepts, from the loader's "unknown variant" error for `zzz_probe`.
fn variants(text: &str) -> Vec<String> {
    let err = load_str("variants", text, no_env()).expect_err("an unknown variant is a problem");
    let problem = err
        .problems
        .iter()
        .find(|p| p.message.contains("unknown variant `zzz_probe`"))
        .unwrap_or_else(|| panic!("no unknown-variant problem: {err}"));
    let expected = problem.message.split("expected").nth(1).unwrap_or_default();
    expected.split('`').skip(1).step_by(2).map(str::to_string).collect()
}

#[test]
fn the_reference_lists_every_key_the_configuration_accepts() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/config.md")).unwrap();
    // The first cell of each table row: | `key` | …
    let documented: std::collections::BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split_once("` |").map(|(k, _)| k.to_string()))
        .collect();
    let accepted: std::collections::BTreeSet<String> = every_key().into_iter().collect();
    assert!(accepted.len() > 100, "the discovery found {} keys", accepted.len());
    let missing: Vec<&String> = accepted.difference(&documented).collect();
    let unknown: Vec<&String> = documented.difference(&accepted).collect();
    assert!(missing.is_empty(), "keys the configuration accepts but docs/config.md lacks: {missing:?}");
    assert!(
        unknown.is_empty(),
        "keys docs/config.md lists but the configuration does not accept: {unknown:?}"
    );
}
