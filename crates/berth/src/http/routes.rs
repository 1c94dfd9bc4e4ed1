//! Splits an OCI path (`/v2/<name>/...`) into the repository name and the endpoint. Names have
//! several components, so the endpoint is recognised from the end of the path.

/// An endpoint under `/v2/<name>/`, with its percent-decoded (not yet validated) parameter.
#[derive(Debug, PartialEq, Eq)]
pub enum Endpoint {
    Blob(String),
    UploadStart,
    Upload(String),
    Manifest(String),
    Tags,
    Referrers(String),
}

fn decoded(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Parses the part of the path after `/v2/` into (name, endpoint).
pub fn parse(rest: &str) -> Option<(&str, Endpoint)> {
    let (head, last) = rest.rsplit_once('/')?;
    // `<name>/blobs/uploads/` and `<name>/blobs/uploads`.
    if let Some(name) = head
        .strip_suffix("/blobs/uploads")
        .filter(|_| last.is_empty())
    {
        return Some((name, Endpoint::UploadStart));
    }
    if let Some(name) = head.strip_suffix("/blobs").filter(|_| last == "uploads") {
        return Some((name, Endpoint::UploadStart));
    }
    let (name, kind) = head.rsplit_once('/')?;
    if last.is_empty() {
        return None;
    }
    let endpoint = match kind {
        "uploads" => {
            let name = name.strip_suffix("/blobs")?;
            return Some((name, Endpoint::Upload(decoded(last))));
        }
        "blobs" => Endpoint::Blob(decoded(last)),
        "manifests" => Endpoint::Manifest(decoded(last)),
        "referrers" => Endpoint::Referrers(decoded(last)),
        "tags" if last == "list" => Endpoint::Tags,
        _ => return None,
    };
    Some((name, endpoint))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let cases = [
            (
                "a/b/blobs/sha256:x",
                Some(("a/b", Endpoint::Blob("sha256:x".into()))),
            ),
            ("a/blobs/uploads/", Some(("a", Endpoint::UploadStart))),
            ("a/blobs/uploads", Some(("a", Endpoint::UploadStart))),
            (
                "a/blobs/uploads/u-1",
                Some(("a", Endpoint::Upload("u-1".into()))),
            ),
            (
                "a/manifests/latest",
                Some(("a", Endpoint::Manifest("latest".into()))),
            ),
            ("a/tags/list", Some(("a", Endpoint::Tags))),
            (
                "a/referrers/sha256:x",
                Some(("a", Endpoint::Referrers("sha256:x".into()))),
            ),
            // Names may contain the endpoint words as components.
            (
                "blobs/manifests/blobs/x",
                Some(("blobs/manifests", Endpoint::Blob("x".into()))),
            ),
            (
                "x/blobs/uploads/blobs/d",
                Some(("x/blobs/uploads", Endpoint::Blob("d".into()))),
            ),
            ("a/manifests/", None),
            ("a/unknown/x", None),
            (
                "a/blobs/sha256%3Aab",
                Some(("a", Endpoint::Blob("sha256:ab".into()))),
            ),
            ("a", None),
        ];
        for (path, want) in cases {
            assert_eq!(parse(path), want, "{path}");
        }
    }
}
