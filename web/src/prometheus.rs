//! The Prometheus text exposition format (version 0.0.4), written from counter
//! snapshots at scrape time: `# HELP` and `# TYPE` once per family, then its samples.

use std::fmt::{Display, Write};

use fleetmq_storage::metrics::HistogramSnapshot;

/// `Content-Type` of a scrape answer.
pub(crate) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One scrape's text, built family by family.
#[derive(Default)]
pub(crate) struct Exposition {
    out: String,
}

impl Exposition {
    /// The finished text.
    pub(crate) fn finish(self) -> String {
        self.out
    }

    /// A counter without labels; `name` ends in `_total`.
    pub(crate) fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.counter_by(name, help, "", [("", value)]);
    }

    /// A counter with one label; `name` ends in `_total`.
    pub(crate) fn counter_by<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        debug_assert!(name.ends_with("_total"), "{name}");
        self.family(name, "counter", help);
        for (value_of_label, n) in values {
            self.sample(name, &[(label, value_of_label)], n);
        }
    }

    /// A gauge without labels.
    pub(crate) fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.gauge_by(name, help, &[], [(Vec::new(), value)]);
    }

    /// A gauge whose samples carry the labels `names`, valued in order.
    pub(crate) fn gauge_by<'a>(
        &mut self,
        name: &str,
        help: &str,
        names: &[&str],
        values: impl IntoIterator<Item = (Vec<&'a str>, u64)>,
    ) {
        self.family(name, "gauge", help);
        for (label_values, n) in values {
            let labels: Vec<(&str, &str)> = names.iter().copied().zip(label_values).collect();
            self.sample(name, &labels, n);
        }
    }

    /// A histogram in seconds: `_bucket{le=...}` (cumulative, ending in `+Inf`),
    /// `_sum` and `_count`.
    pub(crate) fn histogram(&mut self, name: &str, help: &str, h: &HistogramSnapshot) {
        self.family(name, "histogram", help);
        let bucket = format!("{name}_bucket");
        for (bound, n) in &h.buckets {
            self.sample(&bucket, &[("le", &bound.to_string())], n);
        }
        self.sample(&bucket, &[("le", "+Inf")], h.count);
        self.sample(&format!("{name}_sum"), &[], h.sum);
        self.sample(&format!("{name}_count"), &[], h.count);
    }

    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// One line; labels with an empty name are left out.
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(name);
        let mut labels = labels.iter().filter(|(k, _)| !k.is_empty()).peekable();
        if labels.peek().is_some() {
            self.out.push('{');
            for (i, (k, v)) in labels.enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.out, "{k}=\"{v}\"");
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_samples() {
        let mut e = Exposition::default();
        e.counter("a_total", "An a.", 3);
        e.counter_by("b_total", "B by x.", "x", [("q\"\\\n", 1)]);
        e.gauge_by("c", "C.", &["l", "m"], [(vec!["1", "2"], 7)]);
        e.histogram(
            "d_seconds",
            "D.",
            &HistogramSnapshot {
                buckets: vec![(0.5, 1), (1.0, 2)],
                sum: 1.25,
                count: 3,
            },
        );
        let text = e.finish();
        let expected = "# HELP a_total An a.\n# TYPE a_total counter\na_total 3\n\
            # HELP b_total B by x.\n# TYPE b_total counter\nb_total{x=\"q\\\"\\\\\\n\"} 1\n\
            # HELP c C.\n# TYPE c gauge\nc{l=\"1\",m=\"2\"} 7\n\
            # HELP d_seconds D.\n# TYPE d_seconds histogram\n\
            d_seconds_bucket{le=\"0.5\"} 1\nd_seconds_bucket{le=\"1\"} 2\n\
            d_seconds_bucket{le=\"+Inf\"} 3\nd_seconds_sum 1.25\nd_seconds_count 3\n";
        assert_eq!(text, expected);
    }
}
