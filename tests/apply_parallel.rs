//! Parallel apply through the real broker: a history made to trip a careless parallel applier
//! (rows updated many times, unique values freed by one transaction and taken by the next,
//! child rows inserted right after their parent, on a foreign key) applied by four connections,
//! one origin transaction per group so that as many as possible run at once. The end state
//! must be exactly the origin's, every transaction applied once, in origin order.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ferry::capture::txn::TxnHeader;
use ferry::model::{Gtid, MariaGtid, Op, Row, RowChange, Value};
use ferry::sandbox::{Broker, MariaDb, MariaDbOptions, http_get, pick_port};
use ferry::transport::envelope::RecordBuilder;
use mysql_async::prelude::Queryable;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

mod common;
use common::{Lcg, Reaped, apply_only_config, spawn_ferry};

const TRANSACTIONS: u64 = 1500;

/// The origin's tables, as the test's model holds them.
#[derive(Default)]
struct Model {
    /// id → (code, n)
    parents: BTreeMap<i64, (String, i64)>,
    /// item id → parent id
    items: BTreeMap<i64, i64>,
    /// Parents with items are never deleted (the foreign key has no cascade).
    anchored: std::collections::BTreeSet<i64>,
    free_codes: Vec<String>,
    next_parent: i64,
    next_item: i64,
    next_code: u64,
}

fn parent_row(id: i64, code: &str, n: i64) -> Row {
    Row(vec![
        ("id".into(), Value::Int { v: id }),
        ("code".into(), Value::Text { v: code.into() }),
        ("n".into(), Value::Int { v: n }),
    ])
}

fn change(table: &str, op: Op, id: i64, before: Option<Row>, after: Option<Row>) -> RowChange {
    RowChange {
        db: "t".into(),
        table: table.into(),
        op,
        key: Row(vec![("id".into(), Value::Int { v: id })]),
        before,
        after,
        generated: Vec::new(),
    }
}

impl Model {
    /// One origin transaction of one to three changes, applied to the model.
    fn transaction(&mut self, rng: &mut Lcg) -> Vec<RowChange> {
        let mut changes = Vec::new();
        for _ in 0..=rng.next(3) {
            let ids: Vec<i64> = self.parents.keys().copied().collect();
            let pick = |rng: &mut Lcg| ids[rng.next(ids.len() as u64) as usize];
            match rng.next(10) {
                // Insert a parent, reusing a freed unique code when there is one.
                0..=2 => {
                    self.next_parent += 1;
                    let id = self.next_parent;
                    let code = self.free_codes.pop().unwrap_or_else(|| {
                        self.next_code += 1;
                        format!("C{}", self.next_code)
                    });
                    changes.push(change("o", Op::Insert, id, None, Some(parent_row(id, &code, 0))));
                    self.parents.insert(id, (code, 0));
                }
                // Update a parent (often a recent one, so the same row is in flight twice).
                3..=5 if !ids.is_empty() => {
                    let id = if rng.next(2) == 0 { *ids.last().unwrap() } else { pick(rng) };
                    let (code, n) = self.parents[&id].clone();
                    let m = n + 1 + rng.next(5) as i64;
                    changes.push(change(
                        "o",
                        Op::Update,
                        id,
                        Some(parent_row(id, &code, n)),
                        Some(parent_row(id, &code, m)),
                    ));
                    self.parents.insert(id, (code, m));
                }
                // Delete a parent without items: its code is free for the next insert.
                6..=7 if !ids.is_empty() => {
                    let id = pick(rng);
                    if self.anchored.contains(&id) {
                        continue;
                    }
                    let (code, n) = self.parents.remove(&id).unwrap();
                    changes.push(change("o", Op::Delete, id, Some(parent_row(id, &code, n)), None));
                    self.free_codes.push(code);
                }
                // A child of the newest parent, across the foreign key.
                8..=9 if !ids.is_empty() => {
                    let parent = *ids.last().unwrap();
                    self.next_item += 1;
                    let id = self.next_item;
                    let row = Row(vec![
                        ("id".into(), Value::Int { v: id }),
                        ("o_id".into(), Value::Int { v: parent }),
                    ]);
                    changes.push(change("item", Op::Insert, id, None, Some(row)));
                    self.items.insert(id, parent);
                    self.anchored.insert(parent);
                }
                _ => {}
            }
        }
        changes
    }
}

fn records(seq: u64, changes: &[RowChange]) -> Vec<Vec<u8>> {
    let header = TxnHeader {
        gtid: Gtid::MariaDb(MariaGtid { domain: 1, server_id: 101, seq }),
        server_id: 101,
        commit_time_us: 1_795_000_000_000_000 + seq as i64,
    };
    let mut b = RecordBuilder::new("east", 65536);
    let mut out = Vec::new();
    for c in changes {
        if let Some(full) = b.push(&header, c).unwrap() {
            out.push(full.payload);
        }
    }
    out.push(b.finish(&header).payload);
    out
}

#[tokio::test]
async fn four_connections_apply_a_tricky_history_exactly_as_the_origin_wrote_it() {
    let west = MariaDb::start_temp(MariaDbOptions::test("west-par", 201, 2)).await.unwrap();
    let broker = Broker::start_temp().await.unwrap();
    broker.create_topic("ferry.east.changes", 1).await.unwrap();
    let mut c = west.conn().await.unwrap();
    c.query_drop("CREATE DATABASE t").await.unwrap();
    c.query_drop("CREATE TABLE t.o (id INT PRIMARY KEY, code VARCHAR(20) NOT NULL UNIQUE, n INT NOT NULL)")
        .await
        .unwrap();
    c.query_drop(
        "CREATE TABLE t.item (id INT PRIMARY KEY, o_id INT NOT NULL, FOREIGN KEY (o_id) REFERENCES t.o (id))",
    )
    .await
    .unwrap();

    let mut model = Model::default();
    let mut rng = Lcg(20261122);
    let mut payloads = Vec::new();
    let mut transactions = 0;
    while transactions < TRANSACTIONS {
        let changes = model.transaction(&mut rng);
        if changes.is_empty() {
            continue;
        }
        transactions += 1;
        payloads.extend(records(transactions, &changes));
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("broker.address.family", "v4")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let sends: Vec<_> = payloads
        .iter()
        .map(|p| {
            producer.send(FutureRecord::to("ferry.east.changes").key("k").payload(p), Duration::from_secs(30))
        })
        .collect();
    for s in futures_util::future::join_all(sends).await {
        s.map_err(|(e, _)| e).unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let http = std::net::SocketAddr::from(([127, 0, 0, 1], pick_port([127, 0, 0, 1].into(), None).unwrap()));
    let apply = "{ on_error: pause, workers: 4, max_group_transactions: 1 }";
    let config = apply_only_config(dir.path(), &west, &broker.bootstrap(), http, apply);
    let log = dir.path().join("west.log");
    // While apply runs, sample how many of ferry's connections are busy at once in the server
    // (running a statement or holding a transaction; the test's own connection left out):
    // more than one proves the connections overlap.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let own: u64 = c.query_first("SELECT CONNECTION_ID()").await.unwrap().unwrap();
    let sampler = {
        let (stop, mut root) = (stop.clone(), west.root_conn().await.unwrap());
        tokio::spawn(async move {
            let mut peak = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let open: Option<u64> = root
                    .query_first(format!(
                        "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                         WHERE USER = 'ferry' AND ID <> {own} AND (COMMAND <> 'Sleep' OR ID IN \
                         (SELECT trx_mysql_thread_id FROM information_schema.INNODB_TRX))"
                    ))
                    .await
                    .unwrap();
                peak = peak.max(open.unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            peak
        })
    };
    let ferry = Reaped(spawn_ferry(&config, &log));

    let want = format!("1-101-{TRANSACTIONS}");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done: Option<String> =
            c.query_first("SELECT gtid FROM ferry.applied WHERE origin = 'east'").await.unwrap_or(None);
        if done.as_deref() == Some(want.as_str()) {
            break;
        }
        if Instant::now() > deadline {
            let (_, status) = http_get(http, "/status").await.unwrap_or_default();
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().join("\n");
            panic!(
                "not applied up to {want} (at {done:?}); status {status}\nlog (last lines first):\n{tail}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, metrics) = http_get(http, "/metrics").await.unwrap();
    drop(ferry);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let overlapping = sampler.await.unwrap();
    println!("at most {overlapping} of ferry's connections were busy at once");
    assert!(overlapping >= 2, "the four connections never applied at the same time (peak {overlapping})");

    let parents: Vec<(i64, String, i64)> = c.query("SELECT id, code, n FROM t.o ORDER BY id").await.unwrap();
    let expected: Vec<(i64, String, i64)> =
        model.parents.iter().map(|(id, (code, n))| (*id, code.clone(), *n)).collect();
    assert_eq!(parents.len(), expected.len(), "parent rows");
    assert_eq!(parents, expected, "every parent row as the origin left it");
    let items: Vec<(i64, i64)> = c.query("SELECT id, o_id FROM t.item ORDER BY id").await.unwrap();
    assert_eq!(items, model.items.into_iter().collect::<Vec<_>>(), "every child row");

    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let applied = metric("ferry_apply_transactions_total{origin=\"east\"}");
    assert_eq!(applied, TRANSACTIONS as f64, "each transaction applied once:\n{metrics}");
    assert_eq!(metric("ferry_apply_dlq_records_total"), 0.0, "nothing dead-lettered:\n{metrics}");
    let aborts = metric("ferry_apply_errors_total{origin=\"east\",kind=\"parallel_abort\"}");
    println!(
        "{TRANSACTIONS} transactions, {} parents and {} items at the end; {aborts} parallel aborts",
        expected.len(),
        items.len()
    );
}
