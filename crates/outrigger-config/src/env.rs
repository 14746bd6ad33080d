//! `${VAR}` and `${VAR:-default}` in string values, expanded from the environment before any
//! setting is read, so every setting can come from the pod spec (`${POD_NAME}`).
//! `$$` writes a literal `$`.

use crate::decode::Cx;
use crate::yaml::{Node, Value};

/// Expands every string value in the tree in place, reporting unset variables and bad syntax.
pub(crate) fn expand_tree(cx: &mut Cx, node: &mut Node, lookup: &dyn Fn(&str) -> Option<String>) {
    match &mut node.value {
        Value::Str(s) if s.contains('$') => match expand(s, lookup) {
            Ok(expanded) => *s = expanded,
            Err(problem) => {
                let (message, fix) = problem.describe();
                cx.error(node.pos, "", message, fix);
            }
        },
        Value::Seq(items) => items.iter_mut().for_each(|n| expand_tree(cx, n, lookup)),
        Value::Map(entries) => entries.iter_mut().for_each(|(_, n)| expand_tree(cx, n, lookup)),
        _ => {}
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Problem {
    Unset(String),
    Unclosed,
    BadName(String),
}

impl Problem {
    fn describe(&self) -> (String, String) {
        match self {
            Problem::Unset(name) => (
                format!("environment variable `{name}` is not set"),
                format!("set {name} in the environment, or give a default: `${{{name}:-value}}`"),
            ),
            Problem::Unclosed => (
                "`${` without a closing `}`".to_owned(),
                "close it: `${NAME}`, or write `$$` for a literal `$`".to_owned(),
            ),
            Problem::BadName(name) => (
                format!("`{name}` is not a valid environment variable name"),
                "use letters, digits and `_`, not starting with a digit: `${SERVICE_NAME}`".to_owned(),
            ),
        }
    }
}

fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, Problem> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or(Problem::Unclosed)?;
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            if !valid_name(name) {
                return Err(Problem::BadName(name.to_owned()));
            }
            match (lookup(name), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(Problem::Unset(name.to_owned())),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "POD").then(|| "web-1".to_owned())
    }

    #[test]
    fn expands_set_variables_defaults_and_escapes() {
        assert_eq!(expand("${POD}", &env).unwrap(), "web-1");
        assert_eq!(expand("a-${POD}-b", &env).unwrap(), "a-web-1-b");
        assert_eq!(expand("${MISSING:-x}", &env).unwrap(), "x");
        assert_eq!(expand("${MISSING:-}", &env).unwrap(), "");
        assert_eq!(expand("${POD:-x}", &env).unwrap(), "web-1");
        assert_eq!(expand("cost $$5 and $x", &env).unwrap(), "cost $5 and $x");
    }

    #[test]
    fn reports_unset_unclosed_and_bad_names() {
        assert_eq!(expand("${MISSING}", &env), Err(Problem::Unset("MISSING".into())));
        assert_eq!(expand("${POD", &env), Err(Problem::Unclosed));
        assert_eq!(expand("${1X}", &env), Err(Problem::BadName("1X".into())));
    }
}
