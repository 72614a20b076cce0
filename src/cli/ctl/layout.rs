//! How `ctl` lays text out for a human: tables and key/value pairs that fit the terminal's
//! width, every cell cleaned of control characters before it is measured, and styles (bold
//! headers, colored states) that `anstream` strips when stdout is not a terminal or
//! `NO_COLOR` is set.

use std::io::IsTerminal;

use anstyle::{AnsiColor, Style};
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use crate::store::syncs::SyncOutcome;
use crate::store::users::UserState;

/// The width when stdout is not a terminal and `COLUMNS` is not set.
pub const DEFAULT_WIDTH: usize = 80;
/// Tables are not squeezed below this: a narrower terminal wraps them.
const MIN_WIDTH: usize = 40;
/// A cut text column keeps at least this many columns (or its header's width).
const MIN_TEXT: usize = 8;
/// A pair's value wraps onto at most this many lines; the last is cut.
const PAIR_LINES: usize = 4;

const HEADER: Style = Style::new().bold();

/// Columns to fit: `COLUMNS` when set, else the terminal's width when stdout is one, else 80.
pub fn output_width() -> usize {
    let columns = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|c| *c > 0);
    let terminal = || {
        let stdout = std::io::stdout();
        if !stdout.is_terminal() {
            return None;
        }
        terminal_size::terminal_size_of(stdout).map(|(w, _)| usize::from(w.0))
    };
    columns
        .or_else(terminal)
        .unwrap_or(DEFAULT_WIDTH)
        .max(MIN_WIDTH)
}

/// What a column holds: whether it may be cut or left out to fit, and how it looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// What names the row, or is short anyway (sub, id, time): never cut nor left out.
    Key,
    /// A user state or sync outcome: never cut nor left out, colored by its value.
    State,
    /// Short and secondary (counts, sizes): never cut; the first left out when cutting the
    /// text is not enough.
    Extra,
    /// Free text (email, error, url): cut with `…` at its end when the table is too wide.
    Text,
    /// A path: as `Text`, but cut at its start, since its end names the file.
    Path,
}

impl Kind {
    fn cuttable(self) -> bool {
        matches!(self, Kind::Text | Kind::Path)
    }
}

/// A column: its header and what it holds.
pub struct Col(pub &'static str, pub Kind);

/// Text from outside (file names, profiles, Google's error strings) with its control
/// characters escaped, so that nothing a user or Google chose can drive the terminal.
pub fn clean(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

/// Rows under upper-cased headers, columns padded to their widest cell, fitted into `width`
/// (see [`fit`]); a last line names the columns left out, if any.
pub fn table(width: usize, cols: &[Col], rows: Vec<Vec<String>>) -> String {
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|row| row.iter().map(|cell| clean(cell)).collect())
        .collect();
    let headers: Vec<String> = cols.iter().map(|c| c.0.to_uppercase()).collect();
    let mut natural: Vec<usize> = headers.iter().map(|h| h.width()).collect();
    let mut empty = vec![true; cols.len()];
    for row in &rows {
        for (i, cell) in row.iter().enumerate().take(cols.len()) {
            natural[i] = natural[i].max(cell.width());
            empty[i] &= cell.is_empty() || cell == "-";
        }
    }
    let widths = fit(cols, &natural, &empty, width);
    let shown = |cells: Vec<(String, Style)>| {
        let cells: Vec<_> = cells
            .iter()
            .zip(&widths)
            .filter_map(|((cell, style), w)| w.map(|w| (cell.as_str(), *style, w)))
            .collect();
        line(&cells)
    };
    let mut out = shown(headers.into_iter().map(|h| (h, HEADER)).collect());
    for row in &rows {
        let cells = row.iter().zip(cols).enumerate().map(|(i, (cell, col))| {
            let style = match col.1 {
                Kind::State => tone(cell),
                Kind::Key | Kind::Extra | Kind::Text | Kind::Path => Style::new(),
            };
            let cell = match (col.1, widths[i]) {
                (Kind::Path, Some(w)) => cut_start(cell, w),
                _ => cell.clone(),
            };
            (cell, style)
        });
        out.push_str(&shown(cells.collect()));
    }
    let left_out: Vec<&str> = (0..cols.len())
        .filter(|&i| widths[i].is_none() && !empty[i])
        .map(|i| cols[i].0)
        .collect();
    if !left_out.is_empty() {
        let note = format!(
            "({} left out to fit {width} columns; --json has everything)",
            left_out.join(", ")
        );
        out.push_str(&cut(&note, width));
        out.push('\n');
    }
    out
}

/// Each column's width, `None` for a column left out. A table too wide for `width` first
/// loses the columns that say nothing (`-` in every row) but its keys, then has its `Text`
/// and `Path` columns cut down to a floor, the rightmost first (tables put what matters
/// most on the left); if that is not enough, columns are left out from the right, `Extra`
/// ones first, then text. `Key` and `State` columns are never cut nor left out: they may
/// overflow.
fn fit(cols: &[Col], natural: &[usize], empty: &[bool], width: usize) -> Vec<Option<usize>> {
    let total = |w: &[Option<usize>]| {
        let shown: Vec<usize> = w.iter().flatten().copied().collect();
        shown.iter().sum::<usize>() + 2 * shown.len().saturating_sub(1)
    };
    let floor = |i: usize| cols[i].0.width().max(MIN_TEXT);
    let mut widths: Vec<Option<usize>> = natural.iter().map(|&w| Some(w)).collect();
    if total(&widths) <= width {
        return widths;
    }
    let expendable = |i: usize| cols[i].1 == Kind::Extra || cols[i].1.cuttable();
    for i in (0..cols.len()).filter(|&i| expendable(i) && empty[i]) {
        widths[i] = None;
    }
    loop {
        let mut cut = widths.clone();
        while total(&cut) > width {
            let rightmost = (0..cut.len())
                .rev()
                .find(|&i| cols[i].1.cuttable() && cut[i].is_some_and(|w| w > floor(i)));
            match rightmost {
                Some(i) => cut[i] = cut[i].map(|w| w - 1),
                None => break,
            }
        }
        let shown = |i: &usize| widths[*i].is_some();
        let last_extra = (0..cols.len())
            .rev()
            .filter(shown)
            .find(|&i| cols[i].1 == Kind::Extra);
        let last_text = (0..cols.len())
            .rev()
            .filter(shown)
            .find(|&i| cols[i].1.cuttable());
        match last_extra.or(last_text) {
            Some(i) if total(&cut) > width => widths[i] = None,
            _ => return cut,
        }
    }
}

/// One row: each cell cut to its width, styled, then padded (so the padding is measured on
/// the text, not on the escape codes), trailing blanks trimmed.
fn line(cells: &[(&str, Style, usize)]) -> String {
    let mut s = cells
        .iter()
        .map(|&(cell, style, w)| {
            let cell = cut(cell, w);
            let pad = " ".repeat(w.saturating_sub(cell.width()));
            format!("{style}{cell}{style:#}{pad}")
        })
        .collect::<Vec<_>>()
        .join("  ");
    s.truncate(s.trim_end().len());
    s.push('\n');
    s
}

/// `s` in at most `width` columns: as it is if it fits, else cut and ended with `…`.
pub fn cut(s: &str, width: usize) -> String {
    if s.width() <= width {
        return s.to_string();
    }
    format!("{}…", prefix(s, width.saturating_sub(1)))
}

/// `s` in at most `width` columns: as it is if it fits, else `…` and its end.
fn cut_start(s: &str, width: usize) -> String {
    if s.width() <= width {
        return s.to_string();
    }
    let mut used = 0;
    let mut start = s.len();
    for (i, c) in s.char_indices().rev() {
        used += c.width().unwrap_or(0);
        if used + 1 > width {
            break;
        }
        start = i;
    }
    format!("…{}", &s[start..])
}

/// The longest start of `s` that takes at most `width` columns.
fn prefix(s: &str, width: usize) -> &str {
    let mut used = 0;
    for (i, c) in s.char_indices() {
        used += c.width().unwrap_or(0);
        if used > width {
            return &s[..i];
        }
    }
    s
}

/// `key  value` lines, keys padded and bold; a value too long for `width` wraps at spaces,
/// indented under itself, onto at most a few lines (the last cut with `…`).
pub fn pairs(width: usize, rows: &[(&str, String)]) -> String {
    let keys = rows.iter().map(|(k, _)| k.width()).max().unwrap_or(0);
    let room = width.saturating_sub(keys + 2).max(MIN_TEXT);
    let mut out = String::new();
    for (key, value) in rows {
        let pad = " ".repeat(keys - key.width());
        for (i, text) in wrap(&clean(value), room).iter().enumerate() {
            if i == 0 {
                out.push_str(&format!("{HEADER}{key}{HEADER:#}{pad}  {text}\n"));
            } else {
                out.push_str(&format!("{:keys$}  {text}\n", ""));
            }
        }
    }
    out
}

/// `text` in lines of at most `width` columns, broken at the last space that fits (or
/// anywhere in a word longer than a line); at most `PAIR_LINES` lines.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut rest = text;
    while rest.width() > width {
        if lines.len() + 1 == PAIR_LINES {
            lines.push(cut(rest, width));
            return lines;
        }
        let fits = prefix(rest, width)
            .len()
            .max(rest.chars().next().map_or(1, char::len_utf8));
        let at = if rest[fits..].starts_with(' ') {
            fits
        } else {
            rest[..fits].rfind(' ').filter(|&at| at > 0).unwrap_or(fits)
        };
        lines.push(rest[..at].trim_end().to_string());
        rest = rest[at..].trim_start();
    }
    lines.push(rest.to_string());
    lines
}

/// The color of a state or outcome: green when all is well, yellow when on hold, red when it
/// needs someone to look.
pub fn tone(value: &str) -> Style {
    let color = if let Ok(state) = value.parse::<UserState>() {
        match state {
            UserState::Active => AnsiColor::Green,
            UserState::Paused => AnsiColor::Yellow,
            UserState::ReauthRequired => AnsiColor::Red,
            UserState::Forgotten => return Style::new().dimmed(),
        }
    } else if let Ok(outcome) = value.parse::<SyncOutcome>() {
        match outcome {
            SyncOutcome::Ok => AnsiColor::Green,
            SyncOutcome::Cancelled => AnsiColor::Yellow,
            SyncOutcome::Failed | SyncOutcome::ReauthRequired => AnsiColor::Red,
        }
    } else {
        return Style::new();
    };
    Style::new().fg_color(Some(color.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(s: &str) -> String {
        anstream::adapter::strip_str(s).to_string()
    }

    #[test]
    fn control_characters_from_outside_are_escaped() {
        let hostile = "evil\u{1b}[2J\rname\u{7}\n";
        assert_eq!(clean(hostile), "evil\\u{1b}[2J\\rname\\u{7}\\n");
        let out = table(
            80,
            &[Col("name", Kind::Text)],
            vec![vec![hostile.to_string()]],
        );
        // The header's bold is ours; nothing from the cell is an escape.
        let body = out.lines().nth(1).unwrap();
        assert!(!body.contains('\u{1b}') && !body.contains('\r'), "{out:?}");
        assert_eq!(clean("plain ünïcode"), "plain ünïcode");
    }

    #[test]
    fn text_columns_are_cut_to_fit_and_keys_never() {
        let sub = "1".repeat(30);
        let error = "e".repeat(200);
        let cols = [
            Col("sub", Kind::Key),
            Col("state", Kind::State),
            Col("email", Kind::Text),
            Col("error", Kind::Text),
        ];
        let row = vec![
            sub.clone(),
            "reauth_required".into(),
            "a@example.com".into(),
            error,
        ];
        let out = plain(&table(80, &cols, vec![row]));
        for line in out.lines() {
            assert!(line.width() <= 80, "{line:?} is {} wide", line.width());
        }
        let row = out.lines().nth(1).unwrap();
        assert!(
            row.starts_with(&format!("{sub}  reauth_required  ")),
            "{row}"
        );
        assert!(row.ends_with('…'), "{row}");
        // The error, right of the email, gives first.
        assert!(row.contains("a@example.com"), "{row}");
    }

    #[test]
    fn text_columns_that_cannot_fit_are_left_out_and_named() {
        let cols = [
            Col("id", Kind::Key),
            Col("flags", Kind::Text),
            Col("email", Kind::Text),
            Col("error", Kind::Text),
        ];
        let rows = vec![vec![
            "9".repeat(65),
            "-".into(),
            "someone@example.com".into(),
            "boom".repeat(10),
        ]];
        let out = plain(&table(80, &cols, rows.clone()));
        assert_eq!(
            out.lines().next(),
            Some(&*format!("ID{}  EMAIL", " ".repeat(63)))
        );
        assert_eq!(
            out.lines().last(),
            Some("(error left out to fit 80 columns; --json has everything)")
        );
        assert!(out.lines().all(|l| l.width() <= 80), "{out}");
        // Wide enough: nothing is left out, not even the empty column.
        let wide = plain(&table(200, &cols, rows));
        assert!(wide.starts_with("ID") && wide.contains("FLAGS") && !wide.contains("left out"));
    }

    #[test]
    fn wide_characters_count_double() {
        let name = "名前".repeat(30);
        let out = plain(&table(40, &[Col("name", Kind::Text)], vec![vec![name]]));
        // 19 of them and the `…`: a 20th would take the 40th and a 41st column.
        assert_eq!(out.lines().nth(1).unwrap().width(), 39, "{out}");
        assert_eq!(cut("ab名", 3), "ab…");
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut_start("docs/名a.json", 8), "…a.json");
        assert_eq!(cut_start("docs/名a.json", 9), "…名a.json");
    }

    #[test]
    fn long_values_wrap_under_themselves() {
        let value = "one two three four five six seven eight nine ten".to_string();
        let out = plain(&pairs(30, &[("key", value), ("k", "short".into())]));
        assert_eq!(
            out,
            "key  one two three four five\n     six seven eight nine ten\nk    short\n"
        );
        let long = plain(&pairs(20, &[("k", "x".repeat(500))]));
        assert_eq!(long.lines().count(), PAIR_LINES, "{long}");
        assert!(long.lines().all(|l| l.width() <= 20), "{long}");
        assert!(long.trim_end().ends_with('…'), "{long}");
    }

    #[test]
    fn states_are_colored_and_padding_ignores_the_codes() {
        let cols = [Col("state", Kind::State), Col("n", Kind::Key)];
        let rows = vec![
            vec!["active".into(), "1".into()],
            vec!["reauth_required".into(), "2".into()],
        ];
        let out = table(80, &cols, rows);
        assert!(out.contains("\u{1b}[1mSTATE"), "{out:?}");
        assert!(out.contains("\u{1b}[32mactive\u{1b}[0m"), "{out:?}");
        assert!(
            out.contains("\u{1b}[31mreauth_required\u{1b}[0m"),
            "{out:?}"
        );
        assert_eq!(
            plain(&out),
            "STATE            N\nactive           1\nreauth_required  2\n"
        );
    }
}
