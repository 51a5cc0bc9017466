//! Process metrics read from `/proc/self` on each scrape (Linux only; elsewhere they are absent).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::names::{self, MetricName};

#[derive(Debug)]
pub struct ProcessCollector {
    start_time_seconds: f64,
}

impl ProcessCollector {
    pub fn new() -> Self {
        let start_time_seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        Self { start_time_seconds }
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

/// What `/proc/self/stat` tells, in base units.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    cpu_seconds: f64,
    threads: i64,
    resident_bytes: i64,
}

/// Parse `/proc/self/stat`. The command name (field 2) may contain spaces and parentheses, so
/// fields are counted from the last `)`.
fn parse_stat(text: &str, ticks_per_second: f64, page_size: i64) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name, field 3 (state) is index 0: utime=14, stime=15, threads=20, rss=24.
    let num = |i: usize| fields.get(i - 3)?.parse::<i64>().ok();
    Some(Stat {
        cpu_seconds: (num(14)? + num(15)?) as f64 / ticks_per_second,
        threads: num(20)?,
        resident_bytes: num(24)? * page_size,
    })
}

fn emit(
    encoder: &mut DescriptorEncoder<'_>,
    name: MetricName,
    metric: impl EncodeMetric,
) -> std::fmt::Result {
    metric.encode(encoder.encode_descriptor(name.name, name.help, None, metric.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        emit(&mut encoder, names::PROCESS_START_TIME, ConstGauge::new(self.start_time_seconds))?;

        // SAFETY: sysconf has no preconditions; it only reads a system constant.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let stat = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|t| parse_stat(&t, ticks.max(1) as f64, page.max(1)));
        if let Some(stat) = stat {
            emit(&mut encoder, names::PROCESS_CPU, ConstCounter::new(stat.cpu_seconds))?;
            emit(&mut encoder, names::PROCESS_RESIDENT_MEMORY, ConstGauge::new(stat.resident_bytes))?;
            emit(&mut encoder, names::PROCESS_THREADS, ConstGauge::new(stat.threads))?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            emit(&mut encoder, names::PROCESS_OPEN_FDS, ConstGauge::new(fds.count() as i64))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parsing_survives_a_name_with_spaces_and_parens() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime priority nice threads itrealvalue starttime vsize rss
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 7 0 1000 123456 300 rest";
        let stat = parse_stat(line, 100.0, 4096).expect("parses");
        assert_eq!(stat, Stat { cpu_seconds: 3.0, threads: 7, resident_bytes: 300 * 4096 });
    }

    #[test]
    fn truncated_stat_is_none_not_a_panic() {
        assert_eq!(parse_stat("42 (x) S 1 2", 100.0, 4096), None);
        assert_eq!(parse_stat("garbage", 100.0, 4096), None);
    }
}
