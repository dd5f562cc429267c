//! `Config::parse` on arbitrary text: never panics, an error always names at
//! least one problem, and the admin key never shows in a problem or in the
//! config's `Debug` output.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use openai_admin_gateway::Config;

const KEY: &str = "sk-admin-fuzz";

fuzz_target!(|text: &str| {
    // Every variable holds the key, so whichever `admin_key_env` the input
    // names, validation gets past the admin key.
    let parsed = Config::parse(text, Path::new("."), &|_| Some(KEY.into()));
    // Only text that holds the key itself may echo it back.
    let may_echo = text.contains(KEY);
    match parsed {
        Ok(config) => {
            assert!(may_echo || !format!("{config:?}").contains(KEY));
        }
        Err(e) => {
            assert!(!e.problems().is_empty(), "an error without a problem");
            assert!(may_echo || !e.to_string().contains(KEY), "{e}");
        }
    }
});
