package apparmor

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/qemufs/qemufs/security/lsm"
)

const uuid = "c7a5fdbd-cdaf-9455-926a-d65c16db1809"

func read(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestCreateUpdateRemove(t *testing.T) {
	dir := t.TempDir()
	ld := &Memory{}
	p := &Profiles{Dir: dir, Loader: ld}
	rules := []Rule{{"/var/lib/images/disk.qcow2", "rwk"}, {"/srv/iso/boot.iso", "rk"}, {"/var/log/qemufs/g.log", "w"}}
	name, err := p.Create(uuid, rules)
	if err != nil {
		t.Fatal(err)
	}
	if name != "libvirt-"+uuid {
		t.Errorf("name = %s", name)
	}
	prof := read(t, filepath.Join(dir, name))
	for _, want := range []string{"profile libvirt-" + uuid + " flags=(attach_disconnected) {", "#include <abstractions/base>", `#include "` + filepath.Join(dir, name+".files") + `"`} {
		if !strings.Contains(prof, want) {
			t.Errorf("profile lacks %q:\n%s", want, prof)
		}
	}
	if strings.Contains(prof, Placeholder) {
		t.Error("placeholder left in profile")
	}
	if i, j := strings.Index(prof, ".files"), strings.LastIndex(prof, "}"); i > j {
		t.Error("files include is outside the profile body")
	}
	files := read(t, filepath.Join(dir, name+".files"))
	for _, want := range []string{`"/var/lib/images/disk.qcow2" rwk,`, `"/srv/iso/boot.iso" rk,`, `"/var/log/qemufs/g.log" w,`} {
		if !strings.Contains(files, want) {
			t.Errorf(".files lacks %q:\n%s", want, files)
		}
	}
	if got := ld.Loaded(); !slices.Equal(got, []string{name}) {
		t.Errorf("loaded = %v", got)
	}

	// A disk is added: .files is rewritten and the profile reloaded.
	if err := p.Update(uuid, append(rules, Rule{"/dev/loop3", "rwk"})); err != nil {
		t.Fatal(err)
	}
	if files := read(t, filepath.Join(dir, name+".files")); !strings.Contains(files, `"/dev/loop3" rwk,`) {
		t.Errorf("updated .files lacks the new disk:\n%s", files)
	}
	if !strings.Contains(ld.loaded[name], "profile libvirt-") {
		t.Error("reload did not read the profile")
	}

	if err := p.Remove(uuid); err != nil {
		t.Fatal(err)
	}
	if len(ld.Loaded()) != 0 {
		t.Errorf("still loaded: %v", ld.Loaded())
	}
	for _, f := range []string{name, name + ".files"} {
		if _, err := os.Stat(filepath.Join(dir, f)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after Remove", f)
		}
	}
}

func TestTemplateFromDirAndTunedProfileKept(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "TEMPLATE"), []byte("profile LIBVIRT_TEMPLATE {\n  # site rules\n}\n"), 0o644)
	p := &Profiles{Dir: dir, Loader: &Memory{}}
	name, err := p.Create(uuid, nil)
	if err != nil {
		t.Fatal(err)
	}
	prof := read(t, filepath.Join(dir, name))
	if !strings.Contains(prof, "# site rules") || !strings.HasPrefix(prof, "profile libvirt-"+uuid+" {") {
		t.Errorf("profile not made from TEMPLATE:\n%s", prof)
	}
	p.Remove(uuid)
	// An administrator's tuned profile is not overwritten.
	tuned := "profile libvirt-" + uuid + " { # tuned\n}\n"
	os.WriteFile(filepath.Join(dir, name), []byte(tuned), 0o644)
	if _, err := p.Create(uuid, []Rule{{"/a", "r"}}); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(dir, name)); got != tuned {
		t.Errorf("tuned profile replaced:\n%s", got)
	}
}

type failLoader struct{}

func (failLoader) Load(string) error   { return errors.New("parser error") }
func (failLoader) Unload(string) error { return nil }

func TestCreateErrorsLeaveNothing(t *testing.T) {
	for _, c := range []struct {
		name     string
		template string
		loader   Loader
		want     string
	}{
		{"no placeholder", "profile x {\n}\n", &Memory{}, "no LIBVIRT_TEMPLATE"},
		{"parser fails", "", failLoader{}, "parser error"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if c.template != "" {
				os.WriteFile(filepath.Join(dir, "TEMPLATE"), []byte(c.template), 0o644)
			}
			p := &Profiles{Dir: dir, Loader: c.loader}
			if _, err := p.Create(uuid, []Rule{{"/a", "r"}}); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
			left, _ := filepath.Glob(filepath.Join(dir, "libvirt-*"))
			if len(left) != 0 {
				t.Errorf("left behind: %v", left)
			}
		})
	}
	if _, err := (&Profiles{Dir: t.TempDir(), Loader: &Memory{}}).Create("../x", nil); err == nil {
		t.Error("uuid with a slash accepted")
	}
}

func TestQuote(t *testing.T) {
	got := FilesText([]Rule{{`/images/a "b"*[1].img`, "rk"}})
	if !strings.Contains(got, `"/images/a \"b\"\*\[1\].img" rk,`) {
		t.Errorf("FilesText = %s", got)
	}
}

// TestParserAbsent shows the real loader reports a host without AppArmor.
func TestParserAbsent(t *testing.T) {
	if lsm.AppArmorEnabled() {
		t.Skip("AppArmor is enabled here")
	}
	f := filepath.Join(t.TempDir(), "p")
	os.WriteFile(f, []byte("profile x {}\n"), 0o644)
	if err := (Parser{}).Load(f); err == nil {
		t.Error("apparmor_parser load succeeded without AppArmor")
	}
}
