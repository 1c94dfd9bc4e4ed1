//! Distribution-compatible configuration (`config.yml`, version 0.1) and `REGISTRY_*` overrides.
