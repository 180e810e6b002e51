/* cmd_chat.c: `spud chat` (placeholder while it is written). */
#include "cli.h"

int cmd_chat(int argc, char **argv) {
    cli_error("chat", "not implemented yet");
    return 1;
}
