//! The Prometheus text exposition format, written by every layer's [`super::StatusSource`] and
//! by the serving layer's own counters into one `/metrics` page.

use std::fmt::Write;

/// A `/metrics` page being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// The `# HELP` and `# TYPE` lines of a metric family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// A counter family with its one unlabelled sample.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, "counter", help);
        self.sample(name, &[], value as f64);
    }

    /// A gauge family with its one unlabelled sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.family(name, "gauge", help);
        self.sample(name, &[], value);
    }

    /// One sample of a family whose lines were written before.
    pub fn sample(&mut self, name: &str, labels: &[(&str, String)], value: f64) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            let _ = writeln!(self.out, "{name}{{{}}} {value}", labels.join(","));
        }
    }

    /// A line written by the caller (histogram buckets).
    pub fn line(&mut self, line: std::fmt::Arguments<'_>) {
        let _ = self.out.write_fmt(line);
        self.out.push('\n');
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_samples_in_the_text_format() {
        let mut out = Exposition::new();
        out.counter("a_total", "things", 3);
        out.family("b", "gauge", "per partition");
        out.sample(
            "b",
            &[("partition", "0".to_owned()), ("view", "v".to_owned())],
            1.5,
        );
        assert_eq!(
            out.finish(),
            "# HELP a_total things\n# TYPE a_total counter\na_total 3\n\
             # HELP b per partition\n# TYPE b gauge\nb{partition=\"0\",view=\"v\"} 1.5\n"
        );
    }
}
