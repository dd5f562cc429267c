//! [`CanonicalPath`]: a request path after the prefix, brought to its one
//! spelling. Routing, the dependency table and client scopes take this
//! type, not a `&str`, so that handing them the path as the client sent it
//! does not compile.
//!
//! Only `proxy::canonicalize` makes one (it lives in `proxy`, which this
//! leaf may not import; the constructor is crate-private, so nothing
//! outside the crate can make one any other way).

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

/// The canonical spelling of the path after the prefix: empty or starting
/// with `/`, no `\`, no encoded `/` or `\`, no empty or dot segments, no
/// control characters, unreserved escapes decoded and the others' hex
/// upper-cased (see `proxy::canonicalize`). Borrows the request's path when
/// it had no escape to rewrite.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CanonicalPath<'a>(
    /// The spelling, borrowed from the request when nothing was rewritten.
    Cow<'a, str>,
);

impl<'a> CanonicalPath<'a> {
    /// Wraps a spelling `proxy::canonicalize` has checked. Calling it on
    /// anything else breaks every promise of this type.
    pub(crate) fn checked(path: Cow<'a, str>) -> Self {
        Self(path)
    }

    /// A raw path taken as canonical, for unit tests that feed the
    /// matchers spellings `canonicalize` would rewrite or refuse.
    #[cfg(test)]
    pub(crate) fn unchecked(path: &'a str) -> Self {
        Self(Cow::Borrowed(path))
    }

    /// The spelling.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The spelling, still borrowed when nothing was rewritten.
    pub fn into_inner(self) -> Cow<'a, str> {
        self.0
    }
}

impl Deref for CanonicalPath<'_> {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for CanonicalPath<'_> {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for CanonicalPath<'_> {
    fn eq(&self, other: &str) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<&str> for CanonicalPath<'_> {
    fn eq(&self, other: &&str) -> bool {
        *self.0 == **other
    }
}

impl fmt::Debug for CanonicalPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for CanonicalPath<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
