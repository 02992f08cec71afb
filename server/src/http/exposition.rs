//! Writing metrics in the two formats Prometheus scrapes: the classic text
//! format (0.0.4, what `promtool check metrics` lints) and OpenMetrics 1.0
//! (when the scraper's `Accept` asks for it). They differ in small ways
//! this writer hides: a counter's TYPE/HELP name (with `_total` in the text
//! format, without in OpenMetrics) and the closing `# EOF`.
//!
//! Pure: it appends to a `String`, does no I/O and takes no lock. Label
//! values are escaped as both formats require; nothing here may write a
//! line a parser rejects, whatever the label values hold.

use std::fmt::Write as _;

/// Which exposition format to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `text/plain; version=0.0.4`.
    Text,
    /// `application/openmetrics-text; version=1.0.0`.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for: OpenMetrics when it names
    /// it (Prometheus sends it first when it prefers it), else text.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// A metric family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    /// Samples are written as `NAME_total`; give the name without it.
    Counter,
    /// Samples are `NAME_bucket{le}`, `NAME_sum`, `NAME_count`.
    Histogram,
}

/// Appends families and samples to a body.
pub struct Writer {
    out: String,
    format: Format,
}

impl Writer {
    pub fn new(format: Format, capacity: usize) -> Writer {
        Writer {
            out: String::with_capacity(capacity),
            format,
        }
    }

    /// Starts a family: its HELP and TYPE lines.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let (type_name, suffix) = match (kind, self.format) {
            (Kind::Gauge, _) => ("gauge", ""),
            (Kind::Counter, Format::Text) => ("counter", "_total"),
            (Kind::Counter, Format::OpenMetrics) => ("counter", ""),
            (Kind::Histogram, _) => ("histogram", ""),
        };
        let _ = writeln!(self.out, "# HELP {name}{suffix} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name}{suffix} {type_name}");
    }

    /// A gauge's sample (or any sample named in full).
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        self.labels(labels, None);
        self.value(value);
    }

    /// A gauge's sample with the time it was measured (ms since the Unix
    /// epoch): the text format writes ms, OpenMetrics seconds.
    pub fn sample_at(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        value: f64,
        time_unix_ms: i64,
    ) {
        self.out.push_str(name);
        self.labels(labels, None);
        let _ = match self.format {
            Format::Text => writeln!(self.out, " {} {time_unix_ms}", Float(value)),
            Format::OpenMetrics => {
                let (s, ms) = (time_unix_ms.div_euclid(1000), time_unix_ms.rem_euclid(1000));
                writeln!(self.out, " {} {s}.{ms:03}", Float(value))
            }
        };
    }

    /// A counter's sample: `NAME_total`.
    pub fn counter(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        self.out.push_str("_total");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {value}");
    }

    /// A histogram's samples: cumulative `buckets` (upper bound, count),
    /// then `+Inf` = `count`, the sum and the count.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        (sum, count): (f64, u64),
    ) {
        let mut le = String::new();
        for &(bound, n) in buckets {
            le.clear();
            let _ = write!(le, "{}", Float(bound));
            self.out.push_str(name);
            self.out.push_str("_bucket");
            self.labels(labels, Some(&le));
            let _ = writeln!(self.out, " {n}");
        }
        self.out.push_str(name);
        self.out.push_str("_bucket");
        self.labels(labels, Some("+Inf"));
        let _ = writeln!(self.out, " {count}");
        self.out.push_str(name);
        self.out.push_str("_sum");
        self.labels(labels, None);
        self.value(sum);
        self.out.push_str(name);
        self.out.push_str("_count");
        self.labels(labels, None);
        let _ = writeln!(self.out, " {count}");
    }

    /// The body, with OpenMetrics' closing line.
    pub fn finish(mut self) -> String {
        if self.format == Format::OpenMetrics {
            self.out.push_str("# EOF\n");
        }
        self.out
    }

    fn labels(&mut self, labels: &[(&str, &str)], le: Option<&str>) {
        if labels.is_empty() && le.is_none() {
            return;
        }
        self.out.push('{');
        let mut first = true;
        for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
            if !first {
                self.out.push(',');
            }
            first = false;
            self.out.push_str(k);
            self.out.push_str("=\"");
            escape_label_value(&mut self.out, v);
            self.out.push('"');
        }
        self.out.push('}');
    }

    fn value(&mut self, v: f64) {
        let _ = writeln!(self.out, " {}", Float(v));
    }
}

/// A float as both formats spell it (`+Inf`, `-Inf`, `NaN`).
struct Float(f64);

impl std::fmt::Display for Float {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        if v.is_nan() {
            f.write_str("NaN")
        } else if v.is_infinite() {
            f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" })
        } else {
            // Rust's shortest round-trip form: parses back to the same f64.
            write!(f, "{v}")
        }
    }
}

/// Escapes a label value: backslash, double quote and newline.
fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text: backslash and newline escaped (ours are constants anyway).
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(format: Format, expected: &str) {
        let mut w = Writer::new(format, 0);
        w.family("x_up", Kind::Gauge, "Up");
        w.sample("x_up", &[("hostname", "a\"b\\c\nd")], 1.0);
        w.family("x_batches", Kind::Counter, "Batches");
        w.counter("x_batches", &[], 7);
        w.family("x_seconds", Kind::Histogram, "Time");
        w.histogram("x_seconds", &[], &[(0.5, 1), (1.0, 2)], (1.25, 3));
        w.sample("x_ratio", &[], 0.1 + 0.2);
        w.sample("x_inf", &[], f64::INFINITY);
        w.sample_at("x_at", &[], 2.5, 1_700_000_000_042);
        assert_eq!(w.finish(), expected);
    }

    #[test]
    fn both_formats() {
        let body = "x_up{hostname=\"a\\\"b\\\\c\\nd\"} 1\n";
        let hist = "# TYPE x_seconds histogram\nx_seconds_bucket{le=\"0.5\"} 1\n\
                    x_seconds_bucket{le=\"1\"} 2\nx_seconds_bucket{le=\"+Inf\"} 3\n\
                    x_seconds_sum 1.25\nx_seconds_count 3\nx_ratio 0.30000000000000004\n\
                    x_inf +Inf\n";
        check(
            Format::Text,
            &format!(
                "# HELP x_up Up\n# TYPE x_up gauge\n{body}# HELP x_batches_total Batches\n\
                 # TYPE x_batches_total counter\nx_batches_total 7\n# HELP x_seconds Time\n{hist}\
                 x_at 2.5 1700000000042\n"
            ),
        );
        check(
            Format::OpenMetrics,
            &format!(
                "# HELP x_up Up\n# TYPE x_up gauge\n{body}# HELP x_batches Batches\n\
                 # TYPE x_batches counter\nx_batches_total 7\n# HELP x_seconds Time\n{hist}\
                 x_at 2.5 1700000000.042\n# EOF\n"
            ),
        );
    }

    #[test]
    fn accept_negotiation() {
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                    version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prom)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(Some("text/plain")), Format::Text);
        assert_eq!(Format::from_accept(None), Format::Text);
    }
}
