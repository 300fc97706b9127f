//! A YAML emitter that writes what Go's `sigs.k8s.io/yaml.Marshal` (gopkg.in/yaml.v2 under the
//! hood) writes for JSON-shaped data, byte for byte.
//!
//! `istioctl x workload entry configure` produces `mesh.yaml` that way, and people diff our
//! output against istioctl's; a generic Rust YAML serializer quotes, orders and indents
//! differently. This is a port of the parts of libyaml's emitter (as carried by yaml.v2) that
//! JSON-shaped values reach: block mappings and sequences, `{}`/`[]` for empty ones, and the
//! four scalar styles with yaml.v2's choice between them, including folding of long lines at
//! 80 columns. Map keys are sorted with yaml.v2's `keyList.Less`.

use std::cmp::Ordering;

use serde_json::{Map, Number, Value};

const BEST_INDENT: isize = 2;
const BEST_WIDTH: usize = 80;

/// Serializes `value` as `yaml.Marshal` would after a JSON round trip.
pub fn to_string(value: &Value) -> String {
    let mut e = Emitter::new();
    e.emit_node(value, true, false, false, false);
    // Document end (implicit) and stream end.
    e.write_indent();
    if e.open_ended {
        e.write_indicator("...", true, false, false);
        e.write_indent();
    }
    e.out
}

/// yaml.v2's `keyList.Less` for two string keys: runs of digits compare as numbers, and a
/// letter sorts after a non-letter (so `ISTIO_META_X` comes before `ISTIO_METAJSON_LABELS`).
pub fn key_order(a: &str, b: &str) -> Ordering {
    if key_less(a, b) {
        Ordering::Less
    } else if key_less(b, a) {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

fn key_less(a: &str, b: &str) -> bool {
    let ar: Vec<char> = a.chars().collect();
    let br: Vec<char> = b.chars().collect();
    let mut i = 0;
    while i < ar.len() && i < br.len() {
        if ar[i] == br[i] {
            i += 1;
            continue;
        }
        let al = ar[i].is_alphabetic();
        let bl = br[i].is_alphabetic();
        if al && bl {
            return ar[i] < br[i];
        }
        if al || bl {
            return bl;
        }
        let mut an: i64 = 0;
        let mut bn: i64 = 0;
        if ar[i] == '0' || br[i] == '0' {
            let mut j = i;
            while j > 0 && is_go_digit(ar[j - 1]) {
                j -= 1;
                if ar[j] != '0' {
                    an = 1;
                    bn = 1;
                    break;
                }
            }
        }
        let mut ai = i;
        while ai < ar.len() && is_go_digit(ar[ai]) {
            an = an.wrapping_mul(10).wrapping_add(digit_value(ar[ai]));
            ai += 1;
        }
        let mut bi = i;
        while bi < br.len() && is_go_digit(br[bi]) {
            bn = bn.wrapping_mul(10).wrapping_add(digit_value(br[bi]));
            bi += 1;
        }
        if an != bn {
            return an < bn;
        }
        if ai != bi {
            return ai < bi;
        }
        return ar[i] < br[i];
    }
    ar.len() < br.len()
}

// Go's unicode.IsDigit is Unicode Nd; `rune - '0'` is then used as the value, as in yaml.v2.
fn is_go_digit(c: char) -> bool {
    c.is_ascii_digit() || (!c.is_ascii() && c.is_numeric())
}

fn digit_value(c: char) -> i64 {
    c as i64 - '0' as i64
}

fn sorted_entries(map: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<_> = map.iter().collect();
    entries.sort_by(|a, b| key_order(a.0, b.0));
    entries
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Style {
    Plain,
    SingleQuoted,
    DoubleQuoted,
    Literal,
}

/// What yaml.v2's `yaml_emitter_analyze_scalar` learns about a scalar.
#[derive(Debug)]
struct Analysis {
    multiline: bool,
    flow_plain_allowed: bool,
    block_plain_allowed: bool,
    single_quoted_allowed: bool,
    block_allowed: bool,
}

fn is_break(c: char) -> bool {
    matches!(c, '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

fn is_blank(c: Option<char>) -> bool {
    matches!(c, Some(' ') | Some('\t'))
}

fn is_blankz(c: Option<char>) -> bool {
    match c {
        None => true,
        Some(c) => c == ' ' || c == '\t' || c == '\0' || is_break(c),
    }
}

/// libyaml's `is_printable`, translated from UTF-8 byte tests to code points. Characters
/// outside the BMP are not "printable" there and get escaped.
fn is_printable(c: char) -> bool {
    let c = c as u32;
    c == 0x0A
        || (0x20..=0x7E).contains(&c)
        || (0xA0..=0xD7FF).contains(&c)
        || ((0xE000..=0xFFFD).contains(&c) && c != 0xFEFF)
}

fn analyze(value: &str) -> Analysis {
    if value.is_empty() {
        return Analysis {
            multiline: false,
            flow_plain_allowed: false,
            block_plain_allowed: true,
            single_quoted_allowed: true,
            block_allowed: false,
        };
    }
    let chars: Vec<char> = value.chars().collect();
    let mut block_indicators = false;
    let mut flow_indicators = false;
    let mut line_breaks = false;
    let mut special_characters = false;
    let mut leading_space = false;
    let mut leading_break = false;
    let mut trailing_space = false;
    let mut trailing_break = false;
    let mut break_space = false;
    let mut space_break = false;
    let mut previous_space = false;
    let mut previous_break = false;

    if value.starts_with("---") || value.starts_with("...") {
        block_indicators = true;
        flow_indicators = true;
    }
    let mut preceded_by_whitespace = true;
    let n = chars.len();
    for i in 0..n {
        let c = chars[i];
        let followed_by_whitespace = i + 1 >= n || is_blank(chars.get(i + 1).copied());
        if i == 0 {
            match c {
                '#' | ',' | '[' | ']' | '{' | '}' | '&' | '*' | '!' | '|' | '>' | '\'' | '"'
                | '%' | '@' | '`' => {
                    flow_indicators = true;
                    block_indicators = true;
                }
                '?' | ':' => {
                    flow_indicators = true;
                    if followed_by_whitespace {
                        block_indicators = true;
                    }
                }
                '-' if followed_by_whitespace => {
                    flow_indicators = true;
                    block_indicators = true;
                }
                _ => {}
            }
        } else {
            match c {
                ',' | '?' | '[' | ']' | '{' | '}' => flow_indicators = true,
                ':' => {
                    flow_indicators = true;
                    if followed_by_whitespace {
                        block_indicators = true;
                    }
                }
                '#' if preceded_by_whitespace => {
                    flow_indicators = true;
                    block_indicators = true;
                }
                _ => {}
            }
        }
        // The emitter runs with unicode output on, so only non-printables are special.
        if !is_printable(c) {
            special_characters = true;
        }
        if c == ' ' {
            if i == 0 {
                leading_space = true;
            }
            if i + 1 == n {
                trailing_space = true;
            }
            if previous_break {
                break_space = true;
            }
            previous_space = true;
            previous_break = false;
        } else if is_break(c) {
            line_breaks = true;
            if i == 0 {
                leading_break = true;
            }
            if i + 1 == n {
                trailing_break = true;
            }
            if previous_space {
                space_break = true;
            }
            previous_space = false;
            previous_break = true;
        } else {
            previous_space = false;
            previous_break = false;
        }
        preceded_by_whitespace = is_blankz(Some(c));
    }

    let mut a = Analysis {
        multiline: line_breaks,
        flow_plain_allowed: true,
        block_plain_allowed: true,
        single_quoted_allowed: true,
        block_allowed: true,
    };
    if leading_space || leading_break || trailing_space || trailing_break {
        a.flow_plain_allowed = false;
        a.block_plain_allowed = false;
    }
    if trailing_space {
        a.block_allowed = false;
    }
    if break_space {
        a.flow_plain_allowed = false;
        a.block_plain_allowed = false;
        a.single_quoted_allowed = false;
    }
    if space_break || special_characters {
        a.flow_plain_allowed = false;
        a.block_plain_allowed = false;
        a.single_quoted_allowed = false;
        a.block_allowed = false;
    }
    if line_breaks {
        a.flow_plain_allowed = false;
        a.block_plain_allowed = false;
    }
    if flow_indicators {
        a.flow_plain_allowed = false;
    }
    if block_indicators {
        a.block_plain_allowed = false;
    }
    a
}

/// Whether yaml.v2 would read `s`, written plain, back as something other than a string
/// (`resolve` in resolve.go), or as a base-60 float it quotes for old parsers' sake.
pub fn plain_is_not_string(s: &str) -> bool {
    let first = match s.as_bytes().first() {
        None => return true, // "" resolves to null
        Some(b) => *b,
    };
    // Base-60 floats ("1:20") are quoted too (`isBase60Float`).
    if is_base60_float(s) {
        return true;
    }
    match first {
        b'y' | b'Y' | b'n' | b'N' | b't' | b'T' | b'f' | b'F' | b'o' | b'O' | b'~' => {
            RESOLVE_MAP.contains(&s)
        }
        b'.' => RESOLVE_MAP.contains(&s) || go_parse_float(s),
        b'+' | b'-' | b'0'..=b'9' => {
            if RESOLVE_MAP.contains(&s) || is_timestamp(s) {
                return true;
            }
            let plain: String = s.chars().filter(|c| *c != '_').collect();
            go_parse_int_base0(&plain) || yaml_style_float(&plain) || binary_literal(&plain)
        }
        _ => false,
    }
}

const RESOLVE_MAP: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON", "n", "N", "no", "No",
    "NO", "false", "False", "FALSE", "off", "Off", "OFF", "", "~", "null", "Null", "NULL", ".nan",
    ".NaN", ".NAN", ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF",
];

fn all_digits(s: &str, radix: u32) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_digit(radix))
}

/// Go's `strconv.ParseInt(s, 0, 64)` or `ParseUint(s, 0, 64)` succeeding (underscores are
/// already removed by the caller, as yaml.v2 does).
fn go_parse_int_base0(s: &str) -> bool {
    let (neg, body) = match s.as_bytes().first() {
        Some(b'+') => (false, &s[1..]),
        Some(b'-') => (true, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = if let Some(r) = body.strip_prefix("0x").or(body.strip_prefix("0X")) {
        (16, r)
    } else if let Some(r) = body.strip_prefix("0o").or(body.strip_prefix("0O")) {
        (8, r)
    } else if let Some(r) = body.strip_prefix("0b").or(body.strip_prefix("0B")) {
        (2, r)
    } else if body.len() > 1 && body.starts_with('0') {
        (8, &body[1..])
    } else {
        (10, body)
    };
    if !all_digits(digits, radix) {
        return false;
    }
    let Ok(v) = u128::from_str_radix(digits, radix) else {
        return false;
    };
    if neg {
        v <= 1u128 << 63
    } else {
        v <= u64::MAX as u128
    }
}

/// `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`
fn yaml_style_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    if i < b.len() && b[i] == b'.' {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    } else {
        if digits(&mut i) == 0 {
            return false;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            digits(&mut i);
        }
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// `strconv.ParseFloat` for the strings that reach it in resolve (they start with '.').
fn go_parse_float(s: &str) -> bool {
    yaml_style_float(s)
}

/// The `0b`/`-0b` branch of resolve (only reached when ParseInt already failed: overflow).
fn binary_literal(s: &str) -> bool {
    let body = s.strip_prefix("-0b").or(s.strip_prefix("0b"));
    body.is_some_and(|d| all_digits(d, 2))
}

/// `^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$`
fn is_base60_float(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    if i >= b.len() || !b[i].is_ascii_digit() {
        return false;
    }
    i += 1;
    while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
        i += 1;
    }
    let mut groups = 0;
    while i < b.len() && b[i] == b':' {
        i += 1;
        // [0-5]?[0-9]
        if i + 1 < b.len() && (b'0'..=b'5').contains(&b[i]) && b[i + 1].is_ascii_digit() {
            i += 2;
        } else if i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        } else {
            return false;
        }
        groups += 1;
    }
    if groups == 0 {
        return false;
    }
    if i < b.len() && b[i] == b'.' {
        i += 1;
        while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'_') {
            i += 1;
        }
    }
    i == b.len()
}

/// yaml.v2 tries `time.Parse` with a few layouts for strings that start with `YYYY-`.
fn is_timestamp(s: &str) -> bool {
    let b = s.as_bytes();
    let lead = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if lead != 4 || b.len() == 4 || b[4] != b'-' {
        return false;
    }
    // Layouts: "2006-1-2", "2006-1-2 15:4:5.999999999", "2006-1-2T15:4:5.999999999Z07:00"
    // (also with a lower-case 't').
    let mut p = Parser { b, i: 5 };
    let Some(month) = p.number(1, 2) else {
        return false;
    };
    if !p.eat(b'-') {
        return false;
    }
    let Some(day) = p.number(1, 2) else {
        return false;
    };
    let year: u32 = s[0..4].parse().unwrap_or(0);
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return false;
    }
    if p.done() {
        return true;
    }
    let zoned = match p.next() {
        Some(b'T') | Some(b't') => true,
        Some(b' ') => false,
        _ => return false,
    };
    let (Some(h), true, Some(m), true, Some(sec)) = (
        p.number(1, 2),
        p.eat(b':'),
        p.number(1, 2),
        p.eat(b':'),
        p.number(1, 2),
    ) else {
        return false;
    };
    if h > 23 || m > 59 || sec > 59 {
        return false;
    }
    if p.peek() == Some(b'.') {
        p.i += 1;
        if p.number(1, 9).is_none() {
            return false;
        }
    }
    if !zoned {
        return p.done();
    }
    match p.next() {
        Some(b'Z') => p.done(),
        Some(b'+') | Some(b'-') => {
            let (Some(zh), true, Some(zm)) = (p.number(2, 2), p.eat(b':'), p.number(2, 2)) else {
                return false;
            };
            zh <= 24 && zm <= 59 && p.done()
        }
        _ => false,
    }
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn number(&mut self, min: usize, max: usize) -> Option<u32> {
        let start = self.i;
        while self.i < self.b.len() && self.i - start < max && self.b[self.i].is_ascii_digit() {
            self.i += 1;
        }
        if self.i - start < min {
            return None;
        }
        std::str::from_utf8(&self.b[start..self.i])
            .ok()?
            .parse()
            .ok()
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn next(&mut self) -> Option<u8> {
        let c = self.peek();
        self.i += 1;
        c
    }
    fn done(&self) -> bool {
        self.i == self.b.len()
    }
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A JSON number as yaml.v2 prints it after `json.Marshal` and `yaml.Unmarshal`: integers
/// (including integral floats below 1e21, which encoding/json prints without a fraction) as
/// integers, other floats in Go's `%g`-shortest form.
pub fn number_text(n: &Number) -> String {
    if let Some(i) = n.as_i64() {
        return i.to_string();
    }
    if let Some(u) = n.as_u64() {
        return u.to_string();
    }
    let f = n.as_f64().unwrap_or(0.0);
    if f.fract() == 0.0 && f.abs() < 1e21 {
        return format!("{}", f as i128);
    }
    go_format_g(f)
}

/// `strconv.FormatFloat(f, 'g', -1, 64)`.
fn go_format_g(f: f64) -> String {
    // Rust's `{:e}` gives the shortest round-trip digits, like Go's shortest mode.
    let sci = format!("{:e}", f);
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let neg = mantissa.starts_with('-');
    let digits: String = mantissa.chars().filter(|c| c.is_ascii_digit()).collect();
    let sign = if neg { "-" } else { "" };
    if !(-4..6).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.abs())
    } else {
        // %f with as many decimals as there are digits after the point.
        let dp = exp + 1; // digits before the decimal point
        let nd = digits.len() as i32;
        let mut s = String::from(sign);
        if dp <= 0 {
            s.push_str("0.");
            for _ in 0..(-dp) {
                s.push('0');
            }
            s.push_str(&digits);
        } else if dp >= nd {
            s.push_str(&digits);
            for _ in 0..(dp - nd) {
                s.push('0');
            }
        } else {
            s.push_str(&digits[..dp as usize]);
            s.push('.');
            s.push_str(&digits[dp as usize..]);
        }
        s
    }
}

/// The emitter state that matters for JSON-shaped documents (names as in libyaml).
struct Emitter {
    out: String,
    column: usize,
    indent: isize,
    indents: Vec<isize>,
    whitespace: bool,
    indention: bool,
    open_ended: bool,
    flow_level: usize,
    root_context: bool,
    mapping_context: bool,
    simple_key_context: bool,
}

impl Emitter {
    fn new() -> Self {
        Emitter {
            out: String::new(),
            column: 0,
            indent: -1,
            indents: Vec::new(),
            whitespace: true,
            indention: true,
            open_ended: false,
            flow_level: 0,
            root_context: false,
            mapping_context: false,
            simple_key_context: false,
        }
    }

    fn put(&mut self, c: char) {
        self.out.push(c);
        self.column += 1;
    }

    fn put_break(&mut self) {
        self.out.push('\n');
        self.column = 0;
        self.indention = true;
    }

    fn write(&mut self, c: char) {
        self.out.push(c);
        self.column += 1;
    }

    fn write_break(&mut self, c: char) {
        if c == '\n' {
            self.put_break();
        } else {
            self.out.push(c);
            self.column = 0;
            self.indention = true;
        }
    }

    fn increase_indent(&mut self, flow: bool, indentless: bool) {
        self.indents.push(self.indent);
        if self.indent < 0 {
            self.indent = if flow { BEST_INDENT } else { 0 };
        } else if !indentless {
            self.indent += BEST_INDENT;
        }
    }

    fn pop_indent(&mut self) {
        self.indent = self.indents.pop().unwrap_or(-1);
    }

    fn write_indent(&mut self) {
        let indent = self.indent.max(0) as usize;
        if !self.indention || self.column > indent || (self.column == indent && !self.whitespace) {
            self.put_break();
        }
        while self.column < indent {
            self.put(' ');
        }
        self.whitespace = true;
    }

    fn write_indicator(
        &mut self,
        indicator: &str,
        need_whitespace: bool,
        is_whitespace: bool,
        is_indention: bool,
    ) {
        if need_whitespace && !self.whitespace {
            self.put(' ');
        }
        for c in indicator.chars() {
            self.write(c);
        }
        self.whitespace = is_whitespace;
        self.indention = self.indention && is_indention;
        self.open_ended = false;
    }

    fn emit_node(
        &mut self,
        v: &Value,
        root: bool,
        sequence: bool,
        mapping: bool,
        simple_key: bool,
    ) {
        self.root_context = root;
        self.mapping_context = mapping;
        self.simple_key_context = simple_key;
        let _ = sequence;
        match v {
            Value::Null => self.emit_scalar("null", Style::Plain),
            Value::Bool(b) => self.emit_scalar(if *b { "true" } else { "false" }, Style::Plain),
            Value::Number(n) => self.emit_scalar(&number_text(n), Style::Plain),
            Value::String(s) => {
                let style = if s.contains('\n') {
                    Style::Literal
                } else if plain_is_not_string(s) {
                    Style::DoubleQuoted
                } else {
                    Style::Plain
                };
                self.emit_scalar(s, style)
            }
            Value::Array(items) => {
                if self.flow_level > 0 || items.is_empty() {
                    self.emit_empty_flow("[", "]");
                } else {
                    self.emit_block_sequence(items);
                }
            }
            Value::Object(map) => {
                if self.flow_level > 0 || map.is_empty() {
                    self.emit_empty_flow("{", "}");
                } else {
                    self.emit_block_mapping(map);
                }
            }
        }
    }

    // Only empty collections are written in flow style by yaml.v2 (for JSON-shaped data).
    fn emit_empty_flow(&mut self, open: &str, close: &str) {
        self.write_indicator(open, true, true, false);
        self.increase_indent(true, false);
        self.flow_level += 1;
        self.flow_level -= 1;
        self.pop_indent();
        self.write_indicator(close, false, false, false);
    }

    fn emit_block_sequence(&mut self, items: &[Value]) {
        let indentless = self.mapping_context && !self.indention;
        self.increase_indent(false, indentless);
        for item in items {
            self.write_indent();
            self.write_indicator("-", true, false, true);
            self.emit_node(item, false, true, false, false);
        }
        self.pop_indent();
    }

    fn emit_block_mapping(&mut self, map: &Map<String, Value>) {
        self.increase_indent(false, false);
        for (key, value) in sorted_entries(map) {
            self.write_indent();
            let analysis = analyze(key);
            let simple = !analysis.multiline && key.len() <= 128;
            if simple {
                self.emit_node(&Value::String(key.clone()), false, false, true, true);
                self.write_indicator(":", false, false, false);
            } else {
                self.write_indicator("?", true, false, true);
                self.emit_node(&Value::String(key.clone()), false, false, true, false);
                self.write_indent();
                self.write_indicator(":", true, false, true);
            }
            self.emit_node(value, false, false, true, false);
        }
        self.pop_indent();
    }

    fn emit_scalar(&mut self, value: &str, requested: Style) {
        let a = analyze(value);
        let mut style = requested;
        if self.simple_key_context && a.multiline {
            style = Style::DoubleQuoted;
        }
        if style == Style::Plain {
            if (self.flow_level > 0 && !a.flow_plain_allowed)
                || (self.flow_level == 0 && !a.block_plain_allowed)
            {
                style = Style::SingleQuoted;
            }
            if value.is_empty() && (self.flow_level > 0 || self.simple_key_context) {
                style = Style::SingleQuoted;
            }
        }
        if style == Style::SingleQuoted && !a.single_quoted_allowed {
            style = Style::DoubleQuoted;
        }
        if style == Style::Literal
            && (!a.block_allowed || self.flow_level > 0 || self.simple_key_context)
        {
            style = Style::DoubleQuoted;
        }
        self.increase_indent(true, false);
        let allow_breaks = !self.simple_key_context;
        match style {
            Style::Plain => self.write_plain(value, allow_breaks),
            Style::SingleQuoted => self.write_single_quoted(value, allow_breaks),
            Style::DoubleQuoted => self.write_double_quoted(value, allow_breaks),
            Style::Literal => self.write_literal(value),
        }
        self.pop_indent();
    }

    fn write_plain(&mut self, value: &str, allow_breaks: bool) {
        if !self.whitespace {
            self.put(' ');
        }
        let chars: Vec<char> = value.chars().collect();
        let mut spaces = false;
        let mut breaks = false;
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if c == ' ' {
                if allow_breaks
                    && !spaces
                    && self.column > BEST_WIDTH
                    && chars.get(i + 1) != Some(&' ')
                {
                    self.write_indent();
                } else {
                    self.write(c);
                }
                spaces = true;
            } else if is_break(c) {
                if !breaks && c == '\n' {
                    self.put_break();
                }
                self.write_break(c);
                breaks = true;
            } else {
                if breaks {
                    self.write_indent();
                }
                self.write(c);
                self.indention = false;
                spaces = false;
                breaks = false;
            }
            i += 1;
        }
        self.whitespace = false;
        self.indention = false;
        if self.root_context {
            self.open_ended = true;
        }
    }

    fn write_single_quoted(&mut self, value: &str, allow_breaks: bool) {
        self.write_indicator("'", true, false, false);
        let chars: Vec<char> = value.chars().collect();
        let n = chars.len();
        let mut spaces = false;
        let mut breaks = false;
        let mut i = 0;
        while i < n {
            let c = chars[i];
            if c == ' ' {
                if allow_breaks
                    && !spaces
                    && self.column > BEST_WIDTH
                    && i > 0
                    && i < n - 1
                    && chars.get(i + 1) != Some(&' ')
                {
                    self.write_indent();
                } else {
                    self.write(c);
                }
                spaces = true;
            } else if is_break(c) {
                if !breaks && c == '\n' {
                    self.put_break();
                }
                self.write_break(c);
                self.indention = true;
                breaks = true;
            } else {
                if breaks {
                    self.write_indent();
                }
                if c == '\'' {
                    self.put('\'');
                }
                self.write(c);
                self.indention = false;
                spaces = false;
                breaks = false;
            }
            i += 1;
        }
        self.write_indicator("'", false, false, false);
        self.whitespace = false;
        self.indention = false;
    }

    fn write_double_quoted(&mut self, value: &str, allow_breaks: bool) {
        self.write_indicator("\"", true, false, false);
        let chars: Vec<char> = value.chars().collect();
        let n = chars.len();
        let mut spaces = false;
        let mut i = 0;
        while i < n {
            let c = chars[i];
            if !is_printable(c) || c == '\u{FEFF}' || is_break(c) || c == '"' || c == '\\' {
                self.put('\\');
                let v = c as u32;
                match v {
                    0x00 => self.put('0'),
                    0x07 => self.put('a'),
                    0x08 => self.put('b'),
                    0x09 => self.put('t'),
                    0x0A => self.put('n'),
                    0x0B => self.put('v'),
                    0x0C => self.put('f'),
                    0x0D => self.put('r'),
                    0x1B => self.put('e'),
                    0x22 => self.put('"'),
                    0x5C => self.put('\\'),
                    0x85 => self.put('N'),
                    0xA0 => self.put('_'),
                    0x2028 => self.put('L'),
                    0x2029 => self.put('P'),
                    _ => {
                        let (ind, width) = if v <= 0xFF {
                            ('x', 2)
                        } else if v <= 0xFFFF {
                            ('u', 4)
                        } else {
                            ('U', 8)
                        };
                        self.put(ind);
                        for k in (0..width).rev() {
                            let digit = (v >> (k * 4)) & 0xF;
                            let d = std::char::from_digit(digit, 16)
                                .unwrap_or('0')
                                .to_ascii_uppercase();
                            self.put(d);
                        }
                    }
                }
                spaces = false;
            } else if c == ' ' {
                if allow_breaks && !spaces && self.column > BEST_WIDTH && i != 0 && i != n - 1 {
                    self.write_indent();
                    if chars.get(i + 1) == Some(&' ') {
                        self.put('\\');
                    }
                } else {
                    self.write(c);
                }
                spaces = true;
            } else {
                self.write(c);
                spaces = false;
            }
            i += 1;
        }
        self.write_indicator("\"", false, false, false);
        self.whitespace = false;
        self.indention = false;
    }

    fn write_literal(&mut self, value: &str) {
        self.write_indicator("|", true, false, false);
        // Block scalar hints.
        let chars: Vec<char> = value.chars().collect();
        if chars.first().is_some_and(|c| *c == ' ' || is_break(*c)) {
            self.write_indicator("2", false, false, false);
        }
        self.open_ended = false;
        let chomp = match chars.len() {
            0 => Some("-"),
            n if !is_break(chars[n - 1]) => Some("-"),
            1 => {
                self.open_ended = true;
                Some("+")
            }
            n if is_break(chars[n - 2]) => {
                self.open_ended = true;
                Some("+")
            }
            _ => None,
        };
        if let Some(h) = chomp {
            self.write_indicator(h, false, false, false);
        }
        self.put_break();
        self.indention = true;
        self.whitespace = true;
        let mut breaks = true;
        for c in chars {
            if is_break(c) {
                self.write_break(c);
                self.indention = true;
                breaks = true;
            } else {
                if breaks {
                    self.write_indent();
                }
                self.write(c);
                self.indention = false;
                breaks = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn istioctl_golden_shape() {
        let v = json!({"defaultConfig": {
            "proxyMetadata": {
                "TRUST_DOMAIN": "",
                "ISTIO_METAJSON_LABELS": "{\"a\":\"b\"}",
                "ISTIO_META_DNS_CAPTURE": "true",
                "ISTIO_META_CLUSTER_ID": "Kubernetes",
                "CANONICAL_REVISION": "latest",
            },
            "discoveryAddress": "istiod-rev-1.istio-system.svc:15012",
            "readinessProbe": {"httpGet": {"port": 8080}},
        }});
        assert_eq!(
            to_string(&v),
            "defaultConfig:\n  discoveryAddress: istiod-rev-1.istio-system.svc:15012\n  proxyMetadata:\n    CANONICAL_REVISION: latest\n    ISTIO_META_CLUSTER_ID: Kubernetes\n    ISTIO_META_DNS_CAPTURE: \"true\"\n    ISTIO_METAJSON_LABELS: '{\"a\":\"b\"}'\n    TRUST_DOMAIN: \"\"\n  readinessProbe:\n    httpGet:\n      port: 8080\n"
        );
    }

    #[test]
    fn key_order_is_yaml_v2s() {
        let mut keys = vec![
            "ISTIO_METAJSON_LABELS",
            "ISTIO_META_X",
            "a10",
            "a9",
            "a09",
            "B",
            "a",
            "_x",
            "ab",
        ];
        keys.sort_by(|a, b| key_order(a, b));
        // Non-letters before letters at the first difference; digit runs compare as numbers,
        // the shorter run first when equal ("a9" < "a09").
        assert_eq!(
            keys,
            vec![
                "_x",
                "B",
                "ISTIO_META_X",
                "ISTIO_METAJSON_LABELS",
                "a",
                "a9",
                "a09",
                "a10",
                "ab"
            ]
        );
    }

    #[test]
    fn scalar_styles() {
        let cases: &[(&str, &str)] = &[
            ("plain", "plain"),
            ("", "\"\""),
            ("true", "\"true\""),
            ("yes", "\"yes\""),
            ("y", "\"y\""),
            ("Null", "\"Null\""),
            ("~", "\"~\""),
            ("123", "\"123\""),
            ("0x1F", "\"0x1F\""),
            ("1_000", "\"1_000\""),
            ("1.5", "\"1.5\""),
            ("-.5e3", "\"-.5e3\""),
            (".5", "\".5\""),
            ("08", "\"08\""),
            ("1:20", "\"1:20\""),
            ("2001-12-14", "\"2001-12-14\""),
            ("2001-13-14", "2001-13-14"),
            (
                "2001-12-14T21:59:43.10-05:00",
                "\"2001-12-14T21:59:43.10-05:00\"",
            ),
            ("<<", "<<"),
            ("{json}", "'{json}'"),
            ("it's", "it's"),
            ("'quoted'", "'''quoted'''"),
            ("- item", "'- item'"),
            ("-item", "-item"),
            ("a: b", "'a: b'"),
            ("a:b", "a:b"),
            ("a #b", "'a #b'"),
            ("a#b", "a#b"),
            (" lead", "' lead'"),
            ("trail ", "'trail '"),
            ("tab\there", "\"tab\\there\""),
            ("caf\u{e9}", "caf\u{e9}"),
            ("\u{1F600}", "\"\\U0001F600\""),
            ("---x", "'---x'"),
            ("@at", "'@at'"),
            ("*", "'*'"),
            ("22,15090", "22,15090"),
        ];
        for (input, want) in cases {
            let got = to_string(&json!({ "k": input }));
            assert_eq!(got, format!("k: {want}\n"), "input {input:?}");
        }
    }

    #[test]
    fn multiline_strings_are_literal() {
        let got = to_string(&json!({"a": {"k": "line1\nline2\n", "l": "x\ny", "m": "x\n\n"}}));
        assert_eq!(
            got,
            "a:\n  k: |\n    line1\n    line2\n  l: |-\n    x\n    y\n  m: |+\n    x\n\n"
        );
        // A multi-line key cannot be a simple key: yaml.v2 writes the `? key` form.
        assert_eq!(to_string(&json!({"a\nb": 1})), "? |-\n  a\n  b\n: 1\n");
        // Trailing spaces before a break forbid the literal style.
        assert_eq!(to_string(&json!({"k": "a \nb"})), "k: \"a \\nb\"\n");
    }

    #[test]
    fn sequences_and_empties() {
        let got = to_string(&json!({
            "list": ["a", {"x": 1, "y": [1, 2]}, [3, 4], []],
            "empty": {},
            "n": null,
            "b": false,
            "f": 0.25,
            "big": 1.5e7,
            "tiny": 1e-7,
            "whole": 5.0,
        }));
        assert_eq!(
            got,
            "b: false\nbig: 15000000\nempty: {}\nf: 0.25\nlist:\n- a\n- x: 1\n  \"y\":\n  - 1\n  - 2\n- - 3\n  - 4\n- []\n\"n\": null\ntiny: 1e-07\nwhole: 5\n"
        );
    }

    #[test]
    fn go_float_formatting() {
        assert_eq!(go_format_g(1234567.5), "1.2345675e+06");
        assert_eq!(go_format_g(123456.5), "123456.5");
        assert_eq!(go_format_g(0.0001), "0.0001");
        assert_eq!(go_format_g(0.00001), "1e-05");
        assert_eq!(go_format_g(-2.5), "-2.5");
        assert_eq!(go_format_g(1e21), "1e+21");
    }

    #[test]
    fn long_lines_fold_at_80_columns() {
        let words = vec!["word"; 30].join(" ");
        let got = to_string(&json!({ "key": words }));
        let lines: Vec<&str> = got.lines().collect();
        assert!(lines.len() > 1, "{got}");
        // Continuation lines are indented under the key, and the break replaces a space.
        assert!(lines[1].starts_with("  word"), "{got}");
        assert!(lines[0].len() > 80 && lines[0].len() < 90, "{got}");
        let rejoined: String = lines
            .iter()
            .map(|l| l.trim_start())
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(rejoined, format!("key: {words}"));
    }

    /// Every hostile string, as a key and as a value, at every nesting the emitter reaches,
    /// and as long lines that fold: the document must read back as exactly the same data.
    #[test]
    fn hostile_strings_read_back_unchanged() {
        let hostile = [
            "a\nb",
            "\ntrailing and leading\n",
            "key: value",
            "key:value",
            "- item",
            "-",
            "? q",
            ": x",
            "&anchor",
            "*alias",
            "!tag",
            "!!str",
            "{flow}",
            "[seq]",
            "#comment",
            "a #comment",
            "%YAML",
            "@at",
            "`tick",
            "|literal",
            ">folded",
            "'single'",
            "\"double\"",
            "---",
            "...",
            "--- x",
            "true",
            "no",
            "~",
            "null",
            "0x1F",
            "1e3",
            "1:20",
            "2001-01-01",
            "",
            " ",
            " lead",
            "trail ",
            "tab\there",
            "\r\n",
            "\u{0}\u{7}\u{1b}",
            "\u{85}\u{2028}\u{2029}\u{feff}",
            "é 😀",
            "\\ backslash \\n",
            "line one\n  indented two\n",
        ];
        let long = format!("{} end", hostile.join(" ").repeat(3));
        let mut map = Map::new();
        for (i, h) in hostile.iter().enumerate() {
            map.insert(h.to_string(), Value::String(format!("{h}{i}")));
            map.insert(format!("v{i}"), Value::String(h.to_string()));
        }
        map.insert("list".into(), json!(hostile.as_slice()));
        map.insert("long".into(), Value::String(long));
        let doc = json!({"defaultConfig": {"nested": map, "proxyMetadata": {"K": "- x: y"}}});
        let text = to_string(&doc);
        let back: Value = crate::yaml::from_str(std::path::Path::new("mesh.yaml"), &text)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(back, doc, "{text}");
    }
}
