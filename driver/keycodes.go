package driver

import (
	"fmt"
	"strconv"
	"strings"
)

// Keys for send-key. virsh names keys in a codeset, "linux" by default,
// whose names are the kernel's KEY_* (include/uapi/linux/input-event-codes.h)
// and whose numbers are those values; QEMU's send-key takes its own key
// names (QKeyCode) or raw "qnum" numbers (XT scancodes, 0x80 set for E0
// keys). qemufs translates linux names and numbers to QKeyCode names, and
// passes qnum numbers through.

// keyCode is one key: its linux name and number and QEMU's name for it.
type keyCode struct {
	name  string
	linux int
	qcode string
}

// linuxKeys lists the keys of a PC keyboard and the common multimedia keys
// that QEMU can send.
var linuxKeys = []keyCode{
	{"KEY_ESC", 1, "esc"},
	{"KEY_1", 2, "1"},
	{"KEY_2", 3, "2"},
	{"KEY_3", 4, "3"},
	{"KEY_4", 5, "4"},
	{"KEY_5", 6, "5"},
	{"KEY_6", 7, "6"},
	{"KEY_7", 8, "7"},
	{"KEY_8", 9, "8"},
	{"KEY_9", 10, "9"},
	{"KEY_0", 11, "0"},
	{"KEY_MINUS", 12, "minus"},
	{"KEY_EQUAL", 13, "equal"},
	{"KEY_BACKSPACE", 14, "backspace"},
	{"KEY_TAB", 15, "tab"},
	{"KEY_Q", 16, "q"},
	{"KEY_W", 17, "w"},
	{"KEY_E", 18, "e"},
	{"KEY_R", 19, "r"},
	{"KEY_T", 20, "t"},
	{"KEY_Y", 21, "y"},
	{"KEY_U", 22, "u"},
	{"KEY_I", 23, "i"},
	{"KEY_O", 24, "o"},
	{"KEY_P", 25, "p"},
	{"KEY_LEFTBRACE", 26, "bracket_left"},
	{"KEY_RIGHTBRACE", 27, "bracket_right"},
	{"KEY_ENTER", 28, "ret"},
	{"KEY_LEFTCTRL", 29, "ctrl"},
	{"KEY_A", 30, "a"},
	{"KEY_S", 31, "s"},
	{"KEY_D", 32, "d"},
	{"KEY_F", 33, "f"},
	{"KEY_G", 34, "g"},
	{"KEY_H", 35, "h"},
	{"KEY_J", 36, "j"},
	{"KEY_K", 37, "k"},
	{"KEY_L", 38, "l"},
	{"KEY_SEMICOLON", 39, "semicolon"},
	{"KEY_APOSTROPHE", 40, "apostrophe"},
	{"KEY_GRAVE", 41, "grave_accent"},
	{"KEY_LEFTSHIFT", 42, "shift"},
	{"KEY_BACKSLASH", 43, "backslash"},
	{"KEY_Z", 44, "z"},
	{"KEY_X", 45, "x"},
	{"KEY_C", 46, "c"},
	{"KEY_V", 47, "v"},
	{"KEY_B", 48, "b"},
	{"KEY_N", 49, "n"},
	{"KEY_M", 50, "m"},
	{"KEY_COMMA", 51, "comma"},
	{"KEY_DOT", 52, "dot"},
	{"KEY_SLASH", 53, "slash"},
	{"KEY_RIGHTSHIFT", 54, "shift_r"},
	{"KEY_KPASTERISK", 55, "kp_multiply"},
	{"KEY_LEFTALT", 56, "alt"},
	{"KEY_SPACE", 57, "spc"},
	{"KEY_CAPSLOCK", 58, "caps_lock"},
	{"KEY_F1", 59, "f1"},
	{"KEY_F2", 60, "f2"},
	{"KEY_F3", 61, "f3"},
	{"KEY_F4", 62, "f4"},
	{"KEY_F5", 63, "f5"},
	{"KEY_F6", 64, "f6"},
	{"KEY_F7", 65, "f7"},
	{"KEY_F8", 66, "f8"},
	{"KEY_F9", 67, "f9"},
	{"KEY_F10", 68, "f10"},
	{"KEY_NUMLOCK", 69, "num_lock"},
	{"KEY_SCROLLLOCK", 70, "scroll_lock"},
	{"KEY_KP7", 71, "kp_7"},
	{"KEY_KP8", 72, "kp_8"},
	{"KEY_KP9", 73, "kp_9"},
	{"KEY_KPMINUS", 74, "kp_subtract"},
	{"KEY_KP4", 75, "kp_4"},
	{"KEY_KP5", 76, "kp_5"},
	{"KEY_KP6", 77, "kp_6"},
	{"KEY_KPPLUS", 78, "kp_add"},
	{"KEY_KP1", 79, "kp_1"},
	{"KEY_KP2", 80, "kp_2"},
	{"KEY_KP3", 81, "kp_3"},
	{"KEY_KP0", 82, "kp_0"},
	{"KEY_KPDOT", 83, "kp_decimal"},
	{"KEY_102ND", 86, "less"},
	{"KEY_F11", 87, "f11"},
	{"KEY_F12", 88, "f12"},
	{"KEY_RO", 89, "ro"},
	{"KEY_HIRAGANA", 91, "hiragana"},
	{"KEY_HENKAN", 92, "henkan"},
	{"KEY_KATAKANAHIRAGANA", 93, "katakanahiragana"},
	{"KEY_MUHENKAN", 94, "muhenkan"},
	{"KEY_KPENTER", 96, "kp_enter"},
	{"KEY_RIGHTCTRL", 97, "ctrl_r"},
	{"KEY_KPSLASH", 98, "kp_divide"},
	{"KEY_SYSRQ", 99, "sysrq"},
	{"KEY_RIGHTALT", 100, "alt_r"},
	{"KEY_LINEFEED", 101, "lf"},
	{"KEY_HOME", 102, "home"},
	{"KEY_UP", 103, "up"},
	{"KEY_PAGEUP", 104, "pgup"},
	{"KEY_LEFT", 105, "left"},
	{"KEY_RIGHT", 106, "right"},
	{"KEY_END", 107, "end"},
	{"KEY_DOWN", 108, "down"},
	{"KEY_PAGEDOWN", 109, "pgdn"},
	{"KEY_INSERT", 110, "insert"},
	{"KEY_DELETE", 111, "delete"},
	{"KEY_MUTE", 113, "audiomute"},
	{"KEY_VOLUMEDOWN", 114, "volumedown"},
	{"KEY_VOLUMEUP", 115, "volumeup"},
	{"KEY_POWER", 116, "power"},
	{"KEY_KPEQUAL", 117, "kp_equals"},
	{"KEY_PAUSE", 119, "pause"},
	{"KEY_KPCOMMA", 121, "kp_comma"},
	{"KEY_HANGEUL", 122, "lang1"},
	{"KEY_HANJA", 123, "lang2"},
	{"KEY_YEN", 124, "yen"},
	{"KEY_LEFTMETA", 125, "meta_l"},
	{"KEY_RIGHTMETA", 126, "meta_r"},
	{"KEY_COMPOSE", 127, "compose"},
	{"KEY_STOP", 128, "stop"},
	{"KEY_AGAIN", 129, "again"},
	{"KEY_PROPS", 130, "props"},
	{"KEY_UNDO", 131, "undo"},
	{"KEY_FRONT", 132, "front"},
	{"KEY_COPY", 133, "copy"},
	{"KEY_OPEN", 134, "open"},
	{"KEY_PASTE", 135, "paste"},
	{"KEY_FIND", 136, "find"},
	{"KEY_CUT", 137, "cut"},
	{"KEY_HELP", 138, "help"},
	{"KEY_MENU", 139, "menu"},
	{"KEY_CALC", 140, "calculator"},
	{"KEY_SLEEP", 142, "sleep"},
	{"KEY_WAKEUP", 143, "wake"},
	{"KEY_MAIL", 155, "mail"},
	{"KEY_BOOKMARKS", 156, "ac_bookmarks"},
	{"KEY_COMPUTER", 157, "computer"},
	{"KEY_BACK", 158, "ac_back"},
	{"KEY_FORWARD", 159, "ac_forward"},
	{"KEY_NEXTSONG", 163, "audionext"},
	{"KEY_PLAYPAUSE", 164, "audioplay"},
	{"KEY_PREVIOUSSONG", 165, "audioprev"},
	{"KEY_STOPCD", 166, "audiostop"},
	{"KEY_HOMEPAGE", 172, "ac_home"},
	{"KEY_REFRESH", 173, "ac_refresh"},
	{"KEY_PRINT", 210, "print"},
	{"KEY_MEDIA", 226, "mediaselect"},
}

var (
	keyByName  = map[string]keyCode{}
	keyByLinux = map[int]keyCode{}
)

func init() {
	for _, k := range linuxKeys {
		keyByName[k.name] = k
		keyByLinux[k.linux] = k
	}
}

// maxSendKeys is the most keys one send-key takes, as libvirt.
const maxSendKeys = 16

// sendKeyCodesets are the codesets send-key accepts.
var sendKeyCodesets = []string{"linux", "qnum"}

// qmpKey is one element of send-key's "keys": {"type":"qcode","data":"a"}
// or {"type":"number","data":30}.
type qmpKey struct {
	Type string `json:"type"`
	Data any    `json:"data"`
}

// parseKey turns one send-key argument of codeset into QEMU's form: a
// linux name (KEY_A, any case) or a number (decimal or 0x hex) of the
// codeset.
func parseKey(codeset, s string) (qmpKey, error) {
	if n, err := strconv.ParseInt(s, 0, 32); err == nil {
		switch codeset {
		case "linux":
			k, ok := keyByLinux[int(n)]
			if !ok {
				return qmpKey{}, fmt.Errorf("linux keycode %d has no QEMU key", n)
			}
			return qmpKey{"qcode", k.qcode}, nil
		case "qnum":
			if n < 1 || n > 0xff {
				return qmpKey{}, fmt.Errorf("qnum keycode %d is out of range 1-255", n)
			}
			return qmpKey{"number", n}, nil
		}
	}
	if codeset != "linux" {
		return qmpKey{}, fmt.Errorf("key %q: codeset %s takes numbers only", s, codeset)
	}
	k, ok := keyByName[strings.ToUpper(s)]
	if !ok {
		return qmpKey{}, fmt.Errorf("unknown key %q (names are linux KEY_* names such as KEY_A, KEY_LEFTCTRL, KEY_F1, or linux keycode numbers)", s)
	}
	return qmpKey{"qcode", k.qcode}, nil
}
