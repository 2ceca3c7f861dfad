//! Board profiles compiled into the binary, so that `eddy serve --board rpi4`
//! works on a device that has only the binary.
//!
//! Each profile is a node config file (`boards/<name>.toml` in the
//! repository) with a `[board]` table naming the board, its target triple
//! and its memory budget.

use log::warn;

use crate::config::{ConfigError, ConfigOrigin, NodeConfig};

/// Every board profile: its name and its TOML text.
pub const BOARDS: &[(&str, &str)] = &[
    ("rpi4", include_str!("../../boards/rpi4.toml")),
    ("rpi-zero2w", include_str!("../../boards/rpi-zero2w.toml")),
    (
        "generic-arm64-musl",
        include_str!("../../boards/generic-arm64-musl.toml"),
    ),
    (
        "x86_64-gateway",
        include_str!("../../boards/x86_64-gateway.toml"),
    ),
];

/// The names of the compiled-in boards.
pub fn names() -> impl Iterator<Item = &'static str> {
    BOARDS.iter().map(|(name, _)| *name)
}

/// The TOML text of board `name`.
pub fn text(name: &str) -> Option<&'static str> {
    BOARDS
        .iter()
        .find(|(board, _)| *board == name)
        .map(|(_, text)| *text)
}

/// Parses board `name`'s profile. Like [`NodeConfig::load`] it does not
/// validate, so that flags can still change values. Warns when this binary
/// was not built for the board's target.
pub fn load(name: &str) -> Result<NodeConfig, ConfigError> {
    let text = text(name).ok_or_else(|| ConfigError::Invalid {
        key: "board",
        reason: format!(
            "`{name}` is not a known board; known boards: {}; or pass a config file \
             with --config",
            names().collect::<Vec<_>>().join(", ")
        ),
    })?;
    let config = NodeConfig::from_toml(text, ConfigOrigin::Board(name.to_owned()))?;
    if let Some(board) = &config.board
        && !board.matches_build()
    {
        warn!(
            "board {} is for {}, but this eddy was built for {}",
            board.name,
            board.target,
            crate::config::BUILD_TARGET
        );
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_board_parses_validates_and_names_itself() {
        for (name, _) in BOARDS {
            let config = load(name).expect("board parses");
            config.validate().expect("board is valid");
            let board = config.board.as_ref().expect("board has a [board] table");
            assert_eq!(board.name, *name);
            assert!(!board.description.is_empty(), "{name} has no description");
            // The payload budgets derive from the memory budget and stay
            // inside it.
            assert!(
                config.queued_request_bytes() + config.queued_response_bytes()
                    < board.memory_budget_bytes(),
                "{name}"
            );
            // The profile round-trips through the effective-config printout.
            let text = config.to_toml().expect("serializes");
            let back = NodeConfig::from_toml(&text, ConfigOrigin::BuiltIn).expect("parses");
            assert_eq!(back, config, "{name}");
        }
    }

    #[test]
    fn every_file_in_boards_is_compiled_in() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../boards");
        let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
            .expect("boards/ exists")
            .filter_map(|entry| {
                let name = entry.expect("entry").file_name().into_string().ok()?;
                name.strip_suffix(".toml").map(str::to_owned)
            })
            .collect();
        on_disk.sort();
        let mut compiled: Vec<String> = names().map(str::to_owned).collect();
        compiled.sort();
        assert_eq!(on_disk, compiled);
    }

    #[test]
    fn zero2w_keeps_its_payloads_small() {
        let config = load("rpi-zero2w").expect("parses");
        assert_eq!(config.queued_request_bytes(), 16 * 1024 * 1024);
        assert_eq!(config.queued_response_bytes(), 8 * 1024 * 1024);
        assert_eq!(
            config.board.as_ref().map(|b| b.target.as_str()),
            Some("armv7-unknown-linux-gnueabihf")
        );
    }

    #[test]
    fn unknown_board_lists_the_known_ones() {
        let message = load("rpi9").expect_err("unknown").to_string();
        assert!(message.contains("rpi9"), "{message}");
        assert!(message.contains("rpi-zero2w"), "{message}");
    }

    #[test]
    fn a_board_table_with_an_unknown_key_or_bad_target_is_rejected() {
        let text = "[board]\nname = \"x\"\ntarget = \"aarch64-unknown-linux-gnu\"\n\
                    memory-budget-mb = 64\nram-mb = 512\n";
        let error = NodeConfig::from_toml(text, ConfigOrigin::BuiltIn).expect_err("unknown key");
        assert!(error.to_string().contains("ram-mb"), "{error}");

        let text = "[board]\nname = \"x\"\ntarget = \"mips-unknown-linux-gnu\"\n\
                    memory-budget-mb = 64\n";
        let config = NodeConfig::from_toml(text, ConfigOrigin::BuiltIn).expect("parses");
        let error = config.validate().expect_err("unknown target");
        assert!(
            matches!(
                error,
                ConfigError::Invalid {
                    key: "board.target",
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[test]
    fn a_budget_too_small_for_one_request_is_rejected() {
        let text = "max-request-bytes = 16777216\n[board]\nname = \"tiny\"\n\
                    target = \"armv7-unknown-linux-gnueabihf\"\nmemory-budget-mb = 32\n";
        let config = NodeConfig::from_toml(text, ConfigOrigin::BuiltIn).expect("parses");
        let error = config
            .validate()
            .expect_err("8 MiB of budget < 16 MiB request");
        assert!(
            matches!(
                error,
                ConfigError::Invalid {
                    key: "queued-max-request-bytes",
                    ..
                }
            ),
            "{error:?}"
        );
    }
}
