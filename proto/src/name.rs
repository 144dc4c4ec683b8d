//! File names as the namespace accepts them: 1 to 255 bytes, no `/`, no NUL, and
//! never `.` or `..`. Every entry point validates with [`validate_name`] before a
//! name reaches a shard.

/// Longest name in bytes (NAME_MAX).
pub const NAME_MAX: usize = 255;
/// Longest symlink target in bytes (PATH_MAX).
pub const PATH_MAX: usize = 4096;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty name")]
    Empty,
    #[error("name longer than {NAME_MAX} bytes")]
    TooLong,
    #[error("name may not be `.` or `..`")]
    Dot,
    #[error("name contains `/` or NUL")]
    BadByte,
}

impl NameError {
    /// The errno a POSIX caller expects.
    pub fn errno(&self) -> i32 {
        match self {
            NameError::TooLong => crate::status::ENAMETOOLONG,
            _ => crate::status::EINVAL,
        }
    }
}

/// Checks one path component.
pub fn validate_name(name: &[u8]) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > NAME_MAX {
        return Err(NameError::TooLong);
    }
    if name == b"." || name == b".." {
        return Err(NameError::Dot);
    }
    if name.iter().any(|&b| b == b'/' || b == 0) {
        return Err(NameError::BadByte);
    }
    Ok(())
}

/// Splits an absolute path into validated components; `//` and a trailing `/` are
/// ignored, `.` and `..` are refused rather than resolved.
pub fn split_path(path: &str) -> Result<Vec<&str>, NameError> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        if part.is_empty() {
            continue;
        }
        validate_name(part.as_bytes())?;
        parts.push(part);
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name(b"a").is_ok());
        assert_eq!(validate_name(b""), Err(NameError::Empty));
        assert_eq!(validate_name(b"."), Err(NameError::Dot));
        assert_eq!(validate_name(b".."), Err(NameError::Dot));
        assert_eq!(validate_name(b"a/b"), Err(NameError::BadByte));
        assert_eq!(validate_name(b"a\0b"), Err(NameError::BadByte));
        assert_eq!(validate_name(&[b'x'; 256]), Err(NameError::TooLong));
        assert!(validate_name(&[b'x'; 255]).is_ok());
    }

    #[test]
    fn paths() {
        assert_eq!(split_path("/a//b/").unwrap(), vec!["a", "b"]);
        assert!(split_path("/").unwrap().is_empty());
        assert!(split_path("/a/../b").is_err());
    }
}
