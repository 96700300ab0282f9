package corpus_test

import (
	"encoding/json"
	"os"
	"sort"
	"strings"
)

// shellSplit splits a libvirt .args file (one argument per line, with
// backslash continuations and single quotes) into words.
func shellSplit(s string) []string {
	s = strings.ReplaceAll(s, "\\\n", " ")
	var out []string
	var cur strings.Builder
	inWord, quoted := false, false
	for _, r := range s {
		switch {
		case quoted:
			if r == '\'' {
				quoted = false
			} else {
				cur.WriteRune(r)
			}
		case r == '\'':
			quoted, inWord = true, true
		case r == ' ' || r == '\n' || r == '\t':
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out
}

// deviceDrivers returns the sorted -device driver names of an argv.
func deviceDrivers(args []string) []string {
	var out []string
	for i := 0; i+1 < len(args); i++ {
		if args[i] != "-device" {
			continue
		}
		v := args[i+1]
		if strings.HasPrefix(v, "{") {
			var m map[string]any
			if json.Unmarshal([]byte(v), &m) == nil {
				if d, ok := m["driver"].(string); ok {
					out = append(out, d)
				}
			}
			continue
		}
		out = append(out, strings.SplitN(v, ",", 2)[0])
	}
	sort.Strings(out)
	return out
}

// sameDevices reports whether args creates the same devices as libvirt's
// expected argv file.
func sameDevices(args []string, expectedFile string) bool {
	data, err := os.ReadFile(expectedFile)
	if err != nil {
		return false
	}
	want := deviceDrivers(shellSplit(string(data)))
	got := deviceDrivers(args)
	return strings.Join(want, " ") == strings.Join(got, " ")
}
