//! The Prometheus text exposition format (version 0.0.4), written by the Prometheus
//! project's `prometheus-client` from counter snapshots taken at scrape time. This
//! module only keeps each family's name, help and values, in the order they are shown;
//! `# HELP`, `# TYPE`, samples, label escaping and histogram buckets are the crate's.

use fleetmq_storage::metrics::HistogramSnapshot;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// `Content-Type` of a scrape answer (`text/plain; version=0.0.4; charset=utf-8`).
pub(crate) const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// One scrape's families, collected in order and written by [`Exposition::finish`].
#[derive(Debug, Default)]
pub(crate) struct Exposition {
    families: Vec<Family>,
}

#[derive(Debug)]
struct Family {
    /// For a counter, the name without the `_total` prometheus-client appends.
    name: &'static str,
    help: &'static str,
    samples: Samples,
}

#[derive(Debug)]
enum Samples {
    Counter(Vec<(Labels, u64)>),
    Gauge(Vec<(Labels, u64)>),
    Histogram(HistogramSnapshot),
}

type Labels = Vec<(&'static str, String)>;

impl Exposition {
    /// The finished text.
    pub(crate) fn finish(self) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // The encoders fail only when the writer does, and a `String` never does.
        let _ = prometheus_text::encode(&mut out, &registry);
        out
    }

    /// A counter without labels; `name` ends in `_total`.
    pub(crate) fn counter(&mut self, name: &'static str, help: &'static str, value: u64) {
        self.push_counter(name, help, vec![(Vec::new(), value)]);
    }

    /// A counter with one label; `name` ends in `_total`.
    pub(crate) fn counter_by<'a>(
        &mut self,
        name: &'static str,
        help: &'static str,
        label: &'static str,
        values: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        let samples = (values.into_iter())
            .map(|(value_of_label, n)| (vec![(label, value_of_label.to_owned())], n))
            .collect();
        self.push_counter(name, help, samples);
    }

    fn push_counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        samples: Vec<(Labels, u64)>,
    ) {
        debug_assert!(name.ends_with("_total"), "{name}");
        self.families.push(Family {
            name: name.strip_suffix("_total").unwrap_or(name),
            help,
            samples: Samples::Counter(samples),
        });
    }

    /// A gauge without labels.
    pub(crate) fn gauge(&mut self, name: &'static str, help: &'static str, value: u64) {
        self.gauge_by(name, help, &[], [(Vec::new(), value)]);
    }

    /// A gauge whose samples carry the labels `names`, valued in order.
    pub(crate) fn gauge_by<'a>(
        &mut self,
        name: &'static str,
        help: &'static str,
        names: &[&'static str],
        values: impl IntoIterator<Item = (Vec<&'a str>, u64)>,
    ) {
        let samples = (values.into_iter())
            .map(|(label_values, n)| {
                let labels = (names.iter().copied())
                    .zip(label_values.into_iter().map(str::to_owned))
                    .collect();
                (labels, n)
            })
            .collect();
        self.families.push(Family {
            name,
            help,
            samples: Samples::Gauge(samples),
        });
    }

    /// A histogram in seconds: `_bucket{le=...}` (cumulative, ending in `+Inf`),
    /// `_sum` and `_count`.
    pub(crate) fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        h: &HistogramSnapshot,
    ) {
        self.families.push(Family {
            name,
            help,
            samples: Samples::Histogram(h.clone()),
        });
    }
}

/// The one scrape the registry in [`Exposition::finish`] collects.
impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        for family in &self.families {
            let kind = match family.samples {
                Samples::Counter(_) => MetricType::Counter,
                Samples::Gauge(_) => MetricType::Gauge,
                Samples::Histogram(_) => MetricType::Histogram,
            };
            let mut metric = encoder.encode_descriptor(family.name, family.help, None, kind)?;
            match &family.samples {
                Samples::Counter(samples) => {
                    for (labels, n) in samples {
                        ConstCounter::new(*n).encode(metric.encode_family(labels)?)?;
                    }
                }
                Samples::Gauge(samples) => {
                    for (labels, n) in samples {
                        ConstGauge::new(*n).encode(metric.encode_family(labels)?)?;
                    }
                }
                Samples::Histogram(h) => {
                    // The snapshot's buckets are cumulative; the crate takes per-bucket
                    // counts and adds them up again (and the `+Inf` bucket is `count`).
                    let mut below = 0;
                    let buckets: Vec<(f64, u64)> = (h.buckets.iter())
                        .map(|&(bound, cumulative)| {
                            let n = cumulative.saturating_sub(below);
                            below = cumulative;
                            (bound, n)
                        })
                        .collect();
                    metric.encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)?;
                }
            }
        }
        Ok(())
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
