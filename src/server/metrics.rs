//! The server's Prometheus metrics: request and error counters per route and status, latency
//! histograms per route, the batch sizes of the forward passes, and the queue depth, rendered in
//! the Prometheus text exposition format (version 0.0.4) at `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the request latency histogram.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Upper bounds of the batch size histogram (images per forward pass).
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(&mut self.counts) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Default, Clone)]
struct Tables {
    /// (route, status) → count.
    requests: BTreeMap<(String, u16), u64>,
    /// (route, error code) → count.
    errors: BTreeMap<(String, String), u64>,
    latency: BTreeMap<String, Histogram>,
    batch_sizes: Option<Histogram>,
}

/// The counters; shared by the handlers, the middleware and the batch worker.
#[derive(Default)]
pub struct Metrics {
    tables: Mutex<Tables>,
    /// Images captioned.
    images: AtomicU64,
    /// Forward passes (calls to the captioner).
    batches: AtomicU64,
    /// Requests refused because the queue was full.
    rejected: AtomicU64,
}

/// Gauges read at render time.
pub struct Gauges {
    pub queue_depth: usize,
    pub queue_capacity: usize,
    pub in_flight: usize,
    pub ready: bool,
}

impl Metrics {
    /// Counts a finished request; `error_code` is the JSON error's `code` when it failed.
    pub fn record_request(&self, route: &str, status: u16, seconds: f64, error_code: Option<&str>) {
        let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        *t.requests.entry((route.to_string(), status)).or_default() += 1;
        if status >= 400 {
            let code = error_code.unwrap_or("unknown").to_string();
            *t.errors.entry((route.to_string(), code)).or_default() += 1;
        }
        t.latency
            .entry(route.to_string())
            .or_insert_with(|| Histogram::new(LATENCY_BUCKETS))
            .observe(seconds);
    }

    /// Counts one forward pass over `images` images.
    pub fn record_batch(&self, images: usize) {
        self.images.fetch_add(images as u64, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        t.batch_sizes
            .get_or_insert_with(|| Histogram::new(BATCH_BUCKETS))
            .observe(images as f64);
    }

    /// Counts a request refused with 503 because the queue was full.
    pub fn record_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition.
    pub fn render(&self, g: &Gauges) -> String {
        let t = self
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut out = String::new();
        out.push_str(
            "# HELP smallcap_requests_total HTTP requests answered, by route and status.\n",
        );
        out.push_str("# TYPE smallcap_requests_total counter\n");
        for ((route, status), n) in &t.requests {
            let _ = writeln!(
                out,
                "smallcap_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
            );
        }
        out.push_str("# HELP smallcap_request_errors_total Requests answered with a 4xx or 5xx, by route and error code.\n");
        out.push_str("# TYPE smallcap_request_errors_total counter\n");
        for ((route, code), n) in &t.errors {
            let _ = writeln!(
                out,
                "smallcap_request_errors_total{{route=\"{route}\",code=\"{code}\"}} {n}"
            );
        }
        out.push_str("# HELP smallcap_request_duration_seconds Time from the request's arrival to its response, by route.\n");
        out.push_str("# TYPE smallcap_request_duration_seconds histogram\n");
        for (route, h) in &t.latency {
            h.render(
                &mut out,
                "smallcap_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
        out.push_str("# HELP smallcap_batch_images Images per shared forward pass.\n");
        out.push_str("# TYPE smallcap_batch_images histogram\n");
        t.batch_sizes
            .unwrap_or_else(|| Histogram::new(BATCH_BUCKETS))
            .render(&mut out, "smallcap_batch_images", "");
        let counters = [
            (
                "smallcap_images_captioned_total",
                "Images captioned.",
                &self.images,
            ),
            (
                "smallcap_batches_total",
                "Shared forward passes run.",
                &self.batches,
            ),
            (
                "smallcap_queue_rejected_total",
                "Requests refused with 503 because the queue was full.",
                &self.rejected,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
        let gauges = [
            (
                "smallcap_queue_depth",
                "Jobs waiting for the batch worker.",
                g.queue_depth,
            ),
            (
                "smallcap_queue_capacity",
                "The most jobs the queue holds.",
                g.queue_capacity,
            ),
            (
                "smallcap_requests_in_flight",
                "Requests being handled.",
                g.in_flight,
            ),
            (
                "smallcap_ready",
                "1 once the models are loaded.",
                usize::from(g.ready),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.record_request("/v1/captions", 200, 0.02, None);
        m.record_request("/v1/captions", 400, 0.2, Some("invalid_image"));
        let text = m.render(&Gauges {
            queue_depth: 3,
            queue_capacity: 64,
            in_flight: 1,
            ready: true,
        });
        assert!(text.contains(
            "smallcap_request_duration_seconds_bucket{route=\"/v1/captions\",le=\"0.01\"} 0\n"
        ));
        assert!(text.contains(
            "smallcap_request_duration_seconds_bucket{route=\"/v1/captions\",le=\"0.025\"} 1\n"
        ));
        assert!(text.contains(
            "smallcap_request_duration_seconds_bucket{route=\"/v1/captions\",le=\"0.25\"} 2\n"
        ));
        assert!(
            text.contains("smallcap_request_duration_seconds_count{route=\"/v1/captions\"} 2\n")
        );
        assert!(text.contains("smallcap_requests_total{route=\"/v1/captions\",status=\"400\"} 1\n"));
        assert!(text.contains(
            "smallcap_request_errors_total{route=\"/v1/captions\",code=\"invalid_image\"} 1\n"
        ));
        assert!(text.contains("smallcap_queue_depth 3\n"));
    }
}
