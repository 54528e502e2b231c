//! Every rule a violation can name, with what it guards, for SARIF's rule list, the docs and
//! anyone filtering on `rule`. A test keeps the corpora's rules in this list.

/// `(rule, what it guards)`, by the file it concerns.
pub const RULES: &[(&str, &str)] = &[
    // The file itself.
    (
        "file-too-large",
        "A request or contract file is at most 1 MiB.",
    ),
    ("bom", "Files are UTF-8 without a byte-order mark."),
    (
        "not-utf8",
        "Files are UTF-8 text (not UTF-16, not Latin-1).",
    ),
    (
        "not-regular-file",
        "A request is a regular file, not a link or a directory.",
    ),
    ("empty-request", "A request file holds a request."),
    // YAML.
    ("yaml-syntax", "The file is valid YAML."),
    (
        "yaml-indentation",
        "Keys of one mapping line up; nested keys are indented under theirs.",
    ),
    ("yaml-tab", "YAML indents with spaces, never tabs."),
    ("yaml-tag", "No explicit YAML tags (`!!binary`, `!custom`)."),
    ("duplicate-key", "Each key appears once in a mapping."),
    ("multiple-documents", "A file holds one YAML document."),
    ("merge-key", "No `<<` merge keys."),
    (
        "alias-limit",
        "Anchors and aliases stay within limits and refer to defined anchors.",
    ),
    (
        "too-complex",
        "At most 32 levels of nesting and 100,000 values.",
    ),
    (
        "non-finite-number",
        "Numbers are finite (no `.inf`, `.nan`, `1e400`).",
    ),
    // Fields, against a schema.
    ("unknown-field", "Only the fields the schema names."),
    ("missing-field", "Required fields are present."),
    (
        "wrong-type",
        "Each field holds the kind of value the schema asks for.",
    ),
    ("invalid-value", "A value has the form the schema asks for."),
    (
        "not-allowed-value",
        "A value is one of those the schema lists.",
    ),
    ("too-small", "A number is not below the schema's minimum."),
    ("too-large", "A number is not above the schema's maximum."),
    (
        "too-short",
        "Text or a list is not shorter than the schema allows.",
    ),
    (
        "too-long",
        "Text or a list is not longer than the schema allows.",
    ),
    ("duplicate-item", "A list names each item once."),
    (
        "more-problems",
        "More problems than are listed; fix these and validate again.",
    ),
    // The request's own fields.
    (
        "invalid-kind",
        "`kind` names a handler: lowercase letters, digits, `-`, `_`.",
    ),
    ("unknown-kind", "`kind` is a handler in handlers/index.yml."),
    (
        "invalid-id",
        "An id is 1-128 letters, digits, `.`, `_`, `-`, starting with a letter or digit.",
    ),
    ("duplicate-id", "An id runs once, ever."),
    (
        "invalid-timeout",
        "`timeout` is a positive number of seconds or a duration such as 5m.",
    ),
    (
        "timeout-too-long",
        "A request may only shorten its handler's timeout.",
    ),
    (
        "invalid-label",
        "`runs-on` labels are names runners register with.",
    ),
    (
        "missing-resource-param",
        "The handler's resource template finds its parameters.",
    ),
    (
        "handler-change",
        "Requests arrive in a commit of their own, not with handler code.",
    ),
    (
        "merge-conflict",
        "The pull request merges cleanly into the mainline.",
    ),
    // handlers/index.yml.
    ("missing-index", "The repository has handlers/index.yml."),
    (
        "broken-index",
        "handlers/index.yml at the request's commit is valid.",
    ),
    (
        "invalid-run",
        "A handler's `run` is a script path in the repository.",
    ),
    ("missing-script", "A handler's script exists."),
    ("not-executable", "A handler's script is executable."),
    ("no-image", "A handler names an `image` or a `build`."),
    (
        "image-and-build",
        "A handler names an `image` or a `build`, not both.",
    ),
    (
        "invalid-image",
        "A handler's image is a valid image reference.",
    ),
    (
        "invalid-build",
        "A handler's build directory is under containers/.",
    ),
    (
        "missing-dockerfile",
        "A handler's build directory holds a Dockerfile.",
    ),
    (
        "invalid-network",
        "A handler's network is `none` or `host`.",
    ),
    ("invalid-checkout", "A handler's checkout setting is valid."),
    ("invalid-runtime", "A handler's runtime is a runtime name."),
    ("invalid-env", "A handler's environment names are valid."),
    (
        "invalid-secret",
        "A handler's secrets are delivered as the runner supports.",
    ),
    (
        "invalid-limit",
        "A handler's limits are within the host's ceilings.",
    ),
    (
        "invalid-resource",
        "A handler's resource template is valid.",
    ),
    (
        "invalid-schema",
        "A handler's params schema is a valid JSON Schema.",
    ),
    // codex.repo.yaml.
    (
        "unsupported-strategy",
        "codex.repo.yaml names a strategy this runner has.",
    ),
    ("invalid-path", "The repository's paths stay inside it."),
    (
        "path-clash",
        "The inbox, outputs and processed paths are distinct.",
    ),
    ("invalid-branch", "The mainline is a valid branch name."),
];

/// What `rule` guards, or a general line for a rule this list does not know.
pub fn describe(rule: &str) -> &'static str {
    RULES
        .iter()
        .find(|(r, _)| *r == rule)
        .map_or("A rule of the request contract.", |(_, d)| d)
}
