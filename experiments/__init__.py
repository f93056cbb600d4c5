"""absl experiment scripts: flags + one library call + outputs under --workdir."""
