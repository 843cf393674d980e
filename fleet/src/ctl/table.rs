//! fleetctl's tables: columns aligned as Go's tabwriter aligns them with a tab as padding (cell
//! widths rounded up to tab stops of 8, the gaps filled with tabs), so scripts that split on
//! whitespace, and eyes, read them as they read fleet's.

const TAB: usize = 8;

/// `rows` (and the upper-case `legend` unless `None`) as aligned text.
pub fn render(legend: Option<&[&str]>, rows: &[Vec<String>]) -> String {
    let mut all: Vec<Vec<String>> = Vec::new();
    if let Some(legend) = legend {
        all.push(legend.iter().map(|h| h.to_uppercase()).collect());
    }
    all.extend(rows.iter().cloned());
    let columns = all.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            let max = all
                .iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0);
            (max + 1).div_ceil(TAB) * TAB
        })
        .collect();
    let mut out = String::new();
    for row in &all {
        for (c, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if c + 1 < row.len() {
                let gap = widths[c] - cell.chars().count();
                out.push_str(&"\t".repeat(gap.div_ceil(TAB)));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_meet_at_tab_stops() {
        let rows = vec![
            vec!["hello.service".to_string(), "1a2b3c4".to_string()],
            vec!["a.service".to_string(), "-".to_string()],
        ];
        let text = render(Some(&["unit", "hash"]), &rows);
        assert_eq!(text, "UNIT\t\tHASH\nhello.service\t1a2b3c4\na.service\t-\n");
        assert_eq!(render(None, &rows[1..]), "a.service\t-\n");
    }
}
