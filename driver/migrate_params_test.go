package driver

import (
	"context"
	"testing"
)

// TestMigrationParamsReset: the capabilities a migration sets on the
// source's QEMU are off again after it failed there (a later save must
// not advise post-copy in its image).
func TestMigrationParamsReset(t *testing.T) {
	ctx := context.Background()
	d := newDriver(t)
	d.Create("g")
	if err := d.Define("g", []byte(minimalXML("g"))); err != nil {
		t.Fatal(err)
	}
	if err := d.Control(ctx, "g", "start --paused"); err != nil {
		t.Fatal(err)
	}
	dm, _ := d.lookup("g")
	r := dm.run
	caps := func() map[string]bool {
		var list []struct {
			Capability string `json:"capability"`
			State      bool   `json:"state"`
		}
		if err := r.mon.Execute(ctx, "query-migrate-capabilities", nil, &list); err != nil {
			t.Fatal(err)
		}
		m := map[string]bool{}
		for _, c := range list {
			m[c.Capability] = c.State
		}
		return m
	}
	if err := r.setMigrationParams(ctx, migrateOptions{live: true, postcopy: true, compressed: true, bandwidth: 8}); err != nil {
		t.Fatal(err)
	}
	if c := caps(); !c["postcopy-ram"] || !c["xbzrle"] || !c["events"] {
		t.Fatalf("capabilities for the migration: %v", c)
	}
	var params struct {
		MaxBandwidth int64 `json:"max-bandwidth"`
	}
	if err := r.mon.Execute(ctx, "query-migrate-parameters", nil, &params); err != nil || params.MaxBandwidth != 8<<20 {
		t.Errorf("max-bandwidth %d (%v), want --bandwidth 8 MiB/s", params.MaxBandwidth, err)
	}
	r.resetMigrationParams()
	if c := caps(); c["postcopy-ram"] || c["xbzrle"] {
		t.Errorf("capabilities after the reset: %v", c)
	}
}
