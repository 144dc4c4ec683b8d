//! Tier policies: what a [`pb::TierPolicy`] selects (a glob over absolute
//! paths, an age by mtime or atime, size bounds), which policy wins for a file
//! (a `pin-hot` policy that selects a file keeps every other policy off it),
//! and the checks a policy passes before metad stores it.
//!
//! Globs: `*` matches within one path component, `?` one character of one,
//! `**` as a whole component any number of components (none included);
//! everything else is literal. `/ckpt/**` selects everything below `/ckpt`.

use crate::pb;

/// The extended attribute holding a directory's storage class, which every
/// file below it (new children included) has unless a nearer directory sets
/// its own: `cold-after=<duration>` (`7d`, `12h`, `30m`, `45s`, seconds).
pub const CLASS_XATTR: &str = "user.cairn.class";

/// Parses `7d`, `12h`, `30m`, `45s` or plain seconds into seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'd')) => (&s[..i], 86_400),
        Some((i, 'h')) => (&s[..i], 3_600),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 's')) => (&s[..i], 1),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("not a duration: {s}"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("duration too large: {s}"))
}

/// The age (seconds, by mtime) after which a storage class moves a file to
/// the cold tier.
pub fn parse_class(value: &str) -> Result<u64, String> {
    match value.trim().strip_prefix("cold-after=") {
        Some(d) => parse_duration(d),
        None => Err(format!(
            "storage class {value:?}: expected cold-after=<duration>"
        )),
    }
}

/// Longest policy name and glob.
const MAX_NAME: usize = 64;
const MAX_GLOB: usize = 4096;

/// What a policy looks at of a file.
#[derive(Debug, Clone, Copy)]
pub struct FileFacts<'a> {
    pub path: &'a str,
    pub size: u64,
    pub mtime_ns: i64,
    pub atime_ns: i64,
}

/// Whether `path` (absolute) matches `glob` (absolute).
pub fn glob_match(glob: &str, path: &str) -> bool {
    let pattern: Vec<&str> = components(glob).collect();
    let path: Vec<&str> = components(path).collect();
    match_components(&pattern, &path)
}

fn components(p: &str) -> impl Iterator<Item = &str> {
    p.split('/').filter(|c| !c.is_empty())
}

fn match_components(pattern: &[&str], path: &[&str]) -> bool {
    match pattern.split_first() {
        None => path.is_empty(),
        Some((&"**", rest)) => (0..=path.len()).any(|skip| match_components(rest, &path[skip..])),
        Some((first, rest)) => match path.split_first() {
            Some((name, path_rest)) => {
                match_component(first.as_bytes(), name.as_bytes())
                    && match_components(rest, path_rest)
            }
            None => false,
        },
    }
}

/// `*` and `?` within one component.
fn match_component(pattern: &[u8], name: &[u8]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((b'*', rest)) => (0..=name.len()).any(|skip| match_component(rest, &name[skip..])),
        Some((b'?', rest)) => !name.is_empty() && match_component(rest, &name[1..]),
        Some((c, rest)) => name.first() == Some(c) && match_component(rest, &name[1..]),
    }
}

/// The directory a walk for `glob` starts at: its components before the first
/// one with a wildcard (`/` when the first has one).
pub fn walk_root(glob: &str) -> String {
    let literal: Vec<&str> = components(glob)
        .take_while(|c| !c.contains(['*', '?']))
        .collect();
    format!("/{}", literal.join("/"))
}

/// Whether `policy` selects the file at `now_ns`.
pub fn selects(policy: &pb::TierPolicy, file: &FileFacts, now_ns: i64) -> bool {
    if !glob_match(&policy.path, file.path) {
        return false;
    }
    if file.size < policy.min_size || (policy.max_size > 0 && file.size > policy.max_size) {
        return false;
    }
    let stamp = match policy.by() {
        pb::TierAgeBy::Mtime => file.mtime_ns,
        pb::TierAgeBy::Atime => file.atime_ns,
    };
    let age_secs = now_ns.saturating_sub(stamp).max(0) as u64 / 1_000_000_000;
    age_secs >= policy.min_age_secs
}

/// The pin-hot policy among `policies` that keeps `policy` off the file, if
/// any (a pin-hot policy is never kept off by another).
pub fn pinned_by<'a>(
    policies: &'a [pb::TierPolicy],
    policy: &pb::TierPolicy,
    file: &FileFacts,
    now_ns: i64,
) -> Option<&'a pb::TierPolicy> {
    if policy.action() == pb::TierAction::PinHot {
        return None;
    }
    policies
        .iter()
        .find(|p| p.action() == pb::TierAction::PinHot && selects(p, file, now_ns))
}

/// Checks a cold backend before it is stored; the error says what is wrong.
pub fn validate_backend(backend: &pb::ColdBackend) -> Result<(), String> {
    let url = &backend.url;
    if let Some(rest) = url.strip_prefix("s3://") {
        let bucket = rest.split('/').next().unwrap_or("");
        if bucket.is_empty() {
            return Err(format!("{url:?}: no bucket"));
        }
        if !backend.endpoint.is_empty()
            && !backend.endpoint.starts_with("http://")
            && !backend.endpoint.starts_with("https://")
        {
            return Err(format!(
                "endpoint {:?}: an http:// or https:// URL",
                backend.endpoint
            ));
        }
        Ok(())
    } else if let Some(dir) = url.strip_prefix("file://") {
        if !dir.starts_with('/') || dir.split('/').any(|c| c == "..") {
            return Err(format!("{url:?}: file:// needs an absolute path"));
        }
        Ok(())
    } else {
        Err(format!(
            "{url:?}: expected s3://bucket/prefix or file:///dir"
        ))
    }
}

/// Checks a policy before it is stored; the error says what is wrong.
pub fn validate(policy: &pb::TierPolicy) -> Result<(), String> {
    let name = &policy.name;
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(format!(
            "policy name {name:?}: 1 to {MAX_NAME} letters, digits, '-', '_' or '.'"
        ));
    }
    if !policy.path.starts_with('/') || policy.path.len() > MAX_GLOB {
        return Err(format!(
            "path {:?}: an absolute glob of at most {MAX_GLOB} bytes",
            policy.path
        ));
    }
    if components(&policy.path).any(|c| c.contains("**") && c != "**") {
        return Err(format!(
            "path {:?}: `**` must be a whole component",
            policy.path
        ));
    }
    if components(&policy.path).any(|c| c == "." || c == "..") {
        return Err(format!("path {:?}: no . or .. components", policy.path));
    }
    match pb::TierAction::try_from(policy.action) {
        Ok(pb::TierAction::Unspecified) | Err(_) => {
            return Err("action: to-cold, pin-hot or expire".into())
        }
        Ok(_) => {}
    }
    if pb::TierAgeBy::try_from(policy.by).is_err() {
        return Err("by: mtime or atime".into());
    }
    if policy.max_size > 0 && policy.max_size < policy.min_size {
        return Err("max-size is below min-size".into());
    }
    if policy.action() == pb::TierAction::Expire && policy.min_age_secs == 0 {
        return Err("an expire policy needs a min-age".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400 * 1_000_000_000;

    fn policy(name: &str, path: &str, action: pb::TierAction) -> pb::TierPolicy {
        pb::TierPolicy {
            name: name.into(),
            path: path.into(),
            action: action as i32,
            ..Default::default()
        }
    }

    fn file(path: &str, size: u64, mtime_days_ago: i64, atime_days_ago: i64) -> FileFacts<'_> {
        FileFacts {
            path,
            size,
            mtime_ns: 100 * DAY - mtime_days_ago * DAY,
            atime_ns: 100 * DAY - atime_days_ago * DAY,
        }
    }

    #[test]
    fn globs() {
        let cases = [
            ("/ckpt/**", "/ckpt/run-1/step-9/model.pt", true),
            ("/ckpt/**", "/ckpt/a", true),
            ("/ckpt/**", "/ckptx/a", false),
            ("/ckpt/**", "/data/ckpt/a", false),
            ("/ckpt/*.pt", "/ckpt/model.pt", true),
            ("/ckpt/*.pt", "/ckpt/run/model.pt", false),
            ("/ckpt/**/*.pt", "/ckpt/model.pt", true),
            ("/ckpt/**/*.pt", "/ckpt/a/b/model.pt", true),
            ("/ckpt/**/*.pt", "/ckpt/a/b/model.bin", false),
            ("/run-?/x", "/run-1/x", true),
            ("/run-?/x", "/run-12/x", false),
            ("/**", "/anything/at/all", true),
            ("/a/*/c", "/a/b/c", true),
            ("/a/*/c", "/a/c", false),
            ("/a*b*c", "/aXXbYYc", true),
            ("/a*b*c", "/aXXbYY", false),
            ("/exact/file", "/exact/file", true),
            ("/exact/file", "/exact/file2", false),
        ];
        for (glob, path, want) in cases {
            assert_eq!(glob_match(glob, path), want, "{glob} vs {path}");
        }
        assert_eq!(walk_root("/ckpt/run-*/**"), "/ckpt");
        assert_eq!(walk_root("/**"), "/");
        assert_eq!(walk_root("/data/imagenet/**"), "/data/imagenet");
    }

    #[test]
    fn age_by_mtime_or_atime_and_size_bounds() {
        let now = 100 * DAY;
        let mut p = policy("old", "/ckpt/**", pb::TierAction::ToCold);
        p.min_age_secs = 7 * 86_400;
        assert!(selects(&p, &file("/ckpt/a", 10, 8, 0), now));
        assert!(selects(&p, &file("/ckpt/a", 10, 7, 0), now));
        assert!(!selects(&p, &file("/ckpt/a", 10, 6, 30), now));
        p.by = pb::TierAgeBy::Atime as i32;
        assert!(selects(&p, &file("/ckpt/a", 10, 0, 30), now));
        assert!(!selects(&p, &file("/ckpt/a", 10, 30, 1), now));
        // A timestamp in the future is age 0.
        assert!(!selects(&p, &file("/ckpt/a", 10, -5, -5), now));

        let mut p = policy("big", "/**", pb::TierAction::ToCold);
        p.min_size = 1 << 20;
        p.max_size = 1 << 30;
        assert!(!selects(&p, &file("/x", (1 << 20) - 1, 0, 0), now));
        assert!(selects(&p, &file("/x", 1 << 20, 0, 0), now));
        assert!(selects(&p, &file("/x", 1 << 30, 0, 0), now));
        assert!(!selects(&p, &file("/x", (1 << 30) + 1, 0, 0), now));
    }

    #[test]
    fn pin_hot_wins() {
        let now = 100 * DAY;
        let policies = vec![
            policy("cold", "/data/**", pb::TierAction::ToCold),
            policy("keep", "/data/imagenet/**", pb::TierAction::PinHot),
            {
                let mut p = policy("exp", "/data/**", pb::TierAction::Expire);
                p.min_age_secs = 1;
                p
            },
        ];
        let pinned = file("/data/imagenet/train/0001.jpg", 100, 50, 50);
        let free = file("/data/other/x", 100, 50, 50);
        for p in [&policies[0], &policies[2]] {
            assert!(selects(p, &pinned, now));
            assert_eq!(
                pinned_by(&policies, p, &pinned, now).map(|p| p.name.as_str()),
                Some("keep")
            );
            assert!(pinned_by(&policies, p, &free, now).is_none());
        }
        // A pin is never kept off by anything.
        assert!(pinned_by(&policies, &policies[1], &pinned, now).is_none());
    }

    #[test]
    fn durations_and_classes() {
        assert_eq!(parse_duration("7d"), Ok(7 * 86_400));
        assert_eq!(parse_duration("12h"), Ok(12 * 3_600));
        assert_eq!(parse_duration("30m"), Ok(1_800));
        assert_eq!(parse_duration("45s"), Ok(45));
        assert_eq!(parse_duration("0"), Ok(0));
        assert!(parse_duration("7w").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_class("cold-after=7d"), Ok(7 * 86_400));
        assert!(parse_class("hot").is_err());
        assert!(parse_class("cold-after=soon").is_err());
    }

    #[test]
    fn backends() {
        let ok = |url: &str, endpoint: &str| {
            validate_backend(&pb::ColdBackend {
                url: url.into(),
                endpoint: endpoint.into(),
                ..Default::default()
            })
        };
        ok("s3://bucket/prefix", "http://127.0.0.1:9000").unwrap();
        ok("s3://bucket", "").unwrap();
        ok("file:///var/cold", "").unwrap();
        for (url, endpoint) in [
            ("s3:///p", ""),
            ("s3://b", "127.0.0.1:9000"),
            ("file://rel", ""),
            ("file:///a/../b", ""),
            ("gs://b", ""),
        ] {
            assert!(ok(url, endpoint).is_err(), "{url} {endpoint}");
        }
    }

    #[test]
    fn validation_names_the_problem() {
        let good = policy("old-ckpt", "/ckpt/**", pb::TierAction::ToCold);
        validate(&good).unwrap();
        let cases: Vec<(pb::TierPolicy, &str)> = vec![
            (policy("", "/x", pb::TierAction::ToCold), "name"),
            (policy("a b", "/x", pb::TierAction::ToCold), "name"),
            (policy("p", "x/**", pb::TierAction::ToCold), "absolute"),
            (
                policy("p", "/a**b", pb::TierAction::ToCold),
                "whole component",
            ),
            (policy("p", "/a/../b", pb::TierAction::ToCold), ".."),
            (policy("p", "/x", pb::TierAction::Unspecified), "action"),
            (policy("p", "/x", pb::TierAction::Expire), "min-age"),
            (
                pb::TierPolicy {
                    min_size: 10,
                    max_size: 5,
                    ..good.clone()
                },
                "max-size",
            ),
            (
                pb::TierPolicy {
                    by: 7,
                    ..good.clone()
                },
                "by",
            ),
        ];
        for (p, want) in cases {
            let err = validate(&p).unwrap_err();
            assert!(err.contains(want), "{want}: {err}");
        }
    }
}
