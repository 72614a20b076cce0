//! The `fields` partial-response parameter: parsing, validation against Drive's schema, and
//! pruning a JSON response down to the selection.
//!
//! Syntax as Drive accepts it: `a,b`, `files(id,name)`, `files/id`, `*`, nested
//! `changes(fileId,file(id,name))`. Unknown names are a 400, as on Drive; real Drive fields the
//! emulator does not produce (e.g. `owners`) are accepted and simply absent.

use serde_json::{Map, Value};
use std::collections::BTreeMap;

use super::error::DriveError;

/// A field selection; an empty map never occurs (a bare name selects the whole value).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Sel {
    All,
    Some(BTreeMap<String, Sel>),
}

/// Which resource a selection applies to, for validation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Schema {
    FileList,
    File,
    ChangeList,
    Change,
    StartPageToken,
    GeneratedIds,
    /// Nested Drive objects we do not model (capabilities, …): anything goes.
    Any,
    Leaf,
}

const FILE_FIELDS: &[&str] = &[
    "kind",
    "id",
    "name",
    "mimeType",
    "description",
    "starred",
    "trashed",
    "explicitlyTrashed",
    "trashingUser",
    "trashedTime",
    "parents",
    "properties",
    "appProperties",
    "spaces",
    "version",
    "webContentLink",
    "webViewLink",
    "iconLink",
    "hasThumbnail",
    "thumbnailLink",
    "thumbnailVersion",
    "viewedByMe",
    "viewedByMeTime",
    "createdTime",
    "modifiedTime",
    "modifiedByMeTime",
    "modifiedByMe",
    "sharedWithMeTime",
    "sharingUser",
    "owners",
    "teamDriveId",
    "driveId",
    "lastModifyingUser",
    "shared",
    "ownedByMe",
    "capabilities",
    "viewersCanCopyContent",
    "copyRequiresWriterPermission",
    "writersCanShare",
    "permissions",
    "permissionIds",
    "hasAugmentedPermissions",
    "folderColorRgb",
    "originalFilename",
    "fullFileExtension",
    "fileExtension",
    "md5Checksum",
    "sha1Checksum",
    "sha256Checksum",
    "size",
    "quotaBytesUsed",
    "headRevisionId",
    "contentHints",
    "imageMediaMetadata",
    "videoMediaMetadata",
    "isAppAuthorized",
    "exportLinks",
    "shortcutDetails",
    "contentRestrictions",
    "resourceKey",
    "linkShareMetadata",
    "labelInfo",
    "inheritedPermissionsDisabled",
    "downloadRestrictions",
];

fn child(schema: Schema, name: &str) -> Option<Schema> {
    use Schema::*;
    match (schema, name) {
        (Any, _) => Some(Any),
        (Leaf, _) => None,
        (FileList, "kind" | "incompleteSearch" | "nextPageToken") => Some(Leaf),
        (FileList, "files") => Some(File),
        (File, n) if FILE_FIELDS.contains(&n) => Some(Any),
        (ChangeList, "kind" | "nextPageToken" | "newStartPageToken") => Some(Leaf),
        (ChangeList, "changes") => Some(Change),
        (
            Change,
            "kind" | "changeType" | "type" | "time" | "removed" | "fileId" | "driveId"
            | "teamDriveId",
        ) => Some(Leaf),
        (Change, "drive" | "teamDrive") => Some(Any),
        (Change, "file") => Some(File),
        (StartPageToken, "kind" | "startPageToken") => Some(Leaf),
        (GeneratedIds, "kind" | "space" | "ids") => Some(Leaf),
        _ => None,
    }
}

fn invalid(spec: &str) -> DriveError {
    DriveError::invalid_fields(format!("Invalid field selection {spec}"))
}

/// Parses and validates `spec` for `schema`.
pub(crate) fn parse(spec: &str, schema: Schema) -> Result<Sel, DriveError> {
    let mut p = Parser {
        s: spec.as_bytes(),
        i: 0,
    };
    let sel = p.list().ok_or_else(|| invalid(spec))?;
    if p.i != p.s.len() {
        return Err(invalid(spec));
    }
    validate(&sel, schema)?;
    Ok(sel)
}

fn validate(sel: &Sel, schema: Schema) -> Result<(), DriveError> {
    let Sel::Some(map) = sel else { return Ok(()) };
    for (name, sub) in map {
        if name == "*" {
            continue;
        }
        let Some(kid) = child(schema, name) else {
            return Err(invalid(name));
        };
        if kid == Schema::Leaf && *sub != Sel::All {
            return Err(invalid(name));
        }
        validate(sub, kid)?;
    }
    Ok(())
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn name(&mut self) -> Option<String> {
        self.skip_ws();
        let start = self.i;
        while self.i < self.s.len()
            && (self.s[self.i].is_ascii_alphanumeric() || matches!(self.s[self.i], b'_' | b'*'))
        {
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn list(&mut self) -> Option<Sel> {
        let mut map = BTreeMap::new();
        loop {
            let (name, sel) = self.item()?;
            merge(&mut map, name, sel);
            self.skip_ws();
            if self.i < self.s.len() && self.s[self.i] == b',' {
                self.i += 1;
                continue;
            }
            break;
        }
        Some(Sel::Some(map))
    }

    /// `name`, `name/path…`, `name(list)`.
    fn item(&mut self) -> Option<(String, Sel)> {
        let name = self.name()?;
        self.skip_ws();
        let sel = match self.s.get(self.i) {
            Some(b'/') => {
                self.i += 1;
                let (n, s) = self.item()?;
                Sel::Some(BTreeMap::from([(n, s)]))
            }
            Some(b'(') => {
                self.i += 1;
                let inner = self.list()?;
                self.skip_ws();
                if self.s.get(self.i) != Some(&b')') {
                    return None;
                }
                self.i += 1;
                inner
            }
            _ => Sel::All,
        };
        Some((name, sel))
    }
}

fn merge(map: &mut BTreeMap<String, Sel>, name: String, sel: Sel) {
    match (map.get_mut(&name), sel) {
        (None, sel) => {
            map.insert(name, sel);
        }
        (Some(Sel::All), _) => {}
        (Some(slot), Sel::All) => *slot = Sel::All,
        (Some(Sel::Some(existing)), Sel::Some(new)) => {
            for (n, s) in new {
                merge(existing, n, s);
            }
        }
    }
}

/// Prunes `value` to `sel`, recursing through arrays.
pub(crate) fn apply(value: Value, sel: &Sel) -> Value {
    match (value, sel) {
        (v, Sel::All) => v,
        (Value::Array(items), sel) => {
            Value::Array(items.into_iter().map(|v| apply(v, sel)).collect())
        }
        (Value::Object(obj), Sel::Some(map)) => {
            if map.contains_key("*") {
                return Value::Object(obj);
            }
            let out: Map<String, Value> = obj
                .into_iter()
                .filter_map(|(k, v)| map.get(&k).map(|s| (k, apply(v, s))))
                .collect();
            Value::Object(out)
        }
        (v, _) => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_and_slash_syntax() {
        let sel = parse(
            "nextPageToken,changes(fileId,file(id,name)),changes/removed",
            Schema::ChangeList,
        )
        .unwrap();
        let v = json!({"kind": "x", "nextPageToken": "2", "changes": [
            {"fileId": "a", "removed": false, "time": "t", "file": {"id": "a", "name": "n", "size": "1"}}
        ]});
        assert_eq!(
            apply(v, &sel),
            json!({"nextPageToken": "2", "changes": [
                {"fileId": "a", "removed": false, "file": {"id": "a", "name": "n"}}
            ]})
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(parse("files(id,bogus)", Schema::FileList).is_err());
        assert!(parse("bogus", Schema::File).is_err());
        assert!(parse("files(id", Schema::FileList).is_err());
        assert!(parse("kind(x)", Schema::FileList).is_err());
        assert!(parse("*", Schema::File).is_ok());
        assert!(parse("files/owners", Schema::FileList).is_ok());
    }
}
