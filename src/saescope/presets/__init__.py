"""Named run presets (TOML): `saescope run --list-presets` prints them; keys are `RunConfig` fields."""
