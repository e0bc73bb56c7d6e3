//! Several runs of the benchmark folded into one table: every number of a
//! row becomes the median over the runs, followed by its spread (min-max)
//! when the runs disagree, and the machine's load average is recorded around
//! each run. One run on a 2-core machine shared with other work is not a
//! figure to publish: latency tails move with whatever else holds the CPU.

/// A row's text cut into the numbers it reports and the text between them,
/// so that the same row from several runs can be combined number by number.
#[derive(Debug, Clone, PartialEq)]
struct Shape {
    /// The text around the numbers: one more piece than there are numbers.
    text: Vec<String>,
    /// Each number's value and the decimals it was printed with.
    numbers: Vec<(f64, usize)>,
}

fn shape(s: &str) -> Shape {
    let mut text = vec![String::new()];
    let mut numbers = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts_number = chars[i].is_ascii_digit()
            // Digits glued to a letter are part of a name (p50, 127.0.0.2), not a figure.
            && !(i > 0 && (chars[i - 1].is_ascii_alphanumeric() || chars[i - 1] == '.'));
        if !starts_number {
            if let Some(t) = text.last_mut() {
                t.push(chars[i]);
            }
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && chars[i].is_ascii_digit() {
            i += 1;
        }
        let mut decimals = 0;
        if i + 1 < chars.len() && chars[i] == '.' && chars[i + 1].is_ascii_digit() {
            i += 1;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
                decimals += 1;
            }
        }
        // A number running on into a dot and digits (an address) is text.
        if i < chars.len()
            && (chars[i] == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        {
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let literal: String = chars[start..i].iter().collect();
            if let Some(t) = text.last_mut() {
                t.push_str(&literal);
            }
            continue;
        }
        let literal: String = chars[start..i].iter().collect();
        match literal.parse::<f64>() {
            Ok(v) => {
                numbers.push((v, decimals));
                text.push(String::new());
            }
            Err(_) => {
                if let Some(t) = text.last_mut() {
                    t.push_str(&literal);
                }
            }
        }
    }
    Shape { text, numbers }
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// The same cell from every run, as one: each number the median, with
/// `(min-max)` after it where the runs differ. Cells whose wording differs
/// between runs (a different count of numbers) are listed per run instead.
pub(crate) fn combine(cells: &[&str]) -> String {
    let Some(first) = cells.first() else {
        return String::new();
    };
    if cells.len() == 1 {
        return (*first).to_string();
    }
    let shapes: Vec<Shape> = cells.iter().map(|c| shape(c)).collect();
    let same = shapes
        .iter()
        .all(|s| s.text == shapes[0].text && s.numbers.len() == shapes[0].numbers.len());
    if !same {
        return cells.join(" | ");
    }
    let mut out = String::new();
    for (k, piece) in shapes[0].text.iter().enumerate() {
        out.push_str(piece);
        if k >= shapes[0].numbers.len() {
            continue;
        }
        let mut values: Vec<f64> = shapes.iter().map(|s| s.numbers[k].0).collect();
        values.sort_by(f64::total_cmp);
        let decimals = shapes.iter().map(|s| s.numbers[k].1).max().unwrap_or(0);
        let (lo, hi) = (values[0], values[values.len() - 1]);
        let mid = median(&values);
        if lo == hi {
            out.push_str(&format!("{mid:.decimals$}"));
        } else {
            out.push_str(&format!(
                "{mid:.decimals$} ({lo:.decimals$}-{hi:.decimals$})"
            ));
        }
    }
    out
}

/// The machine's 1, 5 and 15 minute load averages, as `/proc/loadavg` says.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_become_median_and_spread() {
        let cells = [
            "5.4 ms / 8.0 ms / 9.2 ms",
            "21.6 ms / 62.9 ms / 84.7 ms",
            "6.0 ms / 9.0 ms / 9.2 ms",
        ];
        assert_eq!(
            combine(&cells),
            "6.0 (5.4-21.6) ms / 9.0 (8.0-62.9) ms / 9.2 (9.2-84.7) ms"
        );
    }

    #[test]
    fn equal_numbers_are_printed_once() {
        let cells = ["1000 clients in 10 orgs", "1000 clients in 10 orgs"];
        assert_eq!(combine(&cells), "1000 clients in 10 orgs");
    }

    #[test]
    fn even_run_counts_average_the_middle_pair() {
        assert_eq!(combine(&["10 x", "20 x"]), "15 (10-20) x");
    }

    #[test]
    fn names_with_digits_are_not_figures() {
        let s = shape("p99 19.2 ms from 127.0.0.2");
        assert_eq!(s.numbers, vec![(19.2, 1)]);
        assert_eq!(
            s.text,
            vec!["p99 ".to_string(), " ms from 127.0.0.2".to_string()]
        );
    }

    #[test]
    fn differing_wording_is_listed_per_run() {
        assert_eq!(combine(&["n/a", "5.0 ms"]), "n/a | 5.0 ms");
    }

    #[test]
    fn one_run_is_unchanged() {
        assert_eq!(combine(&["110 ms"]), "110 ms");
    }
}
