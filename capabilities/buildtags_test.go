package capabilities

import (
	"os"
	"os/exec"
	"testing"
)

// TestOtherOSBuild vets the package for macOS (the HVF code behind its
// build tag) and for a GOOS with neither file, so a Linux-only change
// cannot break those builds unseen.
func TestOtherOSBuild(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the go tool")
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go tool in PATH")
	}
	for _, goos := range []string{"darwin", "freebsd"} {
		cmd := exec.Command(goTool, "vet", ".")
		cmd.Env = append(os.Environ(), "GOOS="+goos, "GOARCH=amd64", "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("GOOS=%s go vet: %v\n%s", goos, err, out)
		}
	}
}
