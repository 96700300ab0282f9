package harness

import (
	"errors"
	"fmt"
	"os"
)

// DefineObject makes DIR/NAME under the mount (a network, pool, volume or
// secret: mkdir) and writes its config.xml; the error includes its
// `error` file.
func (m *Mount) DefineObject(xml string, elem ...string) error {
	if err := os.Mkdir(m.Path(elem...), 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return err
	}
	path := append(append([]string{}, elem...), "config.xml")
	if err := m.Write(xml, path...); err != nil {
		errPath := append(append([]string{}, elem...), "error")
		data, _ := os.ReadFile(m.Path(errPath...))
		return fmt.Errorf("define %v: %w (error: %s)", elem, err, data)
	}
	return nil
}
