/* cmd_serve.c: `spud serve`: the OpenAI-compatible HTTP server. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "core.h"
#include "server.h"

#ifndef SPUD_DEFAULT_MODEL_PATH
#define SPUD_DEFAULT_MODEL_PATH "build/default-model.gguf"
#endif

#define SERVE_MAX_KEYS 256

static void serve_usage(FILE *f) {
    fprintf(f,
            "usage: spud serve [-m MODEL] [options]\n"
            "Serve a model over an OpenAI-compatible HTTP API: /v1/chat/completions, /v1/completions,\n"
            "/v1/responses, /v1/models, /apply-template, /health, /metrics.\n"
            "  -m MODEL             GGUF model (default: " SPUD_DEFAULT_MODEL_PATH ")\n"
            "  --host ADDR          address to listen on (default 127.0.0.1)\n"
            "  --port N             port (default 8080; 0: any free port, printed at start)\n"
            "  --parallel N         sequences decoded together (default 4)\n"
            "  --ctx-size C         context per sequence in tokens (default: min(training context, 4096))\n"
            "  -t THREADS           threads for the forward pass (default: all cores)\n"
            "  --api-key KEY        accept this Bearer key (repeatable); with keys, all but /health need one\n"
            "  --api-key-file F     read keys from F, one per line ('#' starts a comment)\n"
            "  --max-queue Q        requests that may wait for a free sequence (default 256); then 429\n"
            "  --max-body BYTES     largest request body (default 4194304); then 413\n"
            "  --prefill-chunk N    prompt tokens per step while other sequences generate (default 64)\n"
            "  --alias NAME         model name reported by /v1/models (default: the file name)\n"
            "  --store-bytes BYTES  memory for stored Responses conversations (default 67108864)\n"
            "  --shutdown-timeout S seconds SIGINT/SIGTERM waits for running requests (default 10)\n");
}

static bool read_keys(const char *cmd, const char *path, char **keys, size_t *n_keys, char **file_text) {
    size_t len;
    if (spud_read_file(path, file_text, &len)) {
        cli_error(cmd, "%s", spud_last_error());
        return false;
    }
    char *save = NULL;
    for (char *line = strtok_r(*file_text, "\r\n", &save); line; line = strtok_r(NULL, "\r\n", &save)) {
        while (*line == ' ' || *line == '\t') line++;
        char *end = line + strlen(line);
        while (end > line && (end[-1] == ' ' || end[-1] == '\t')) *--end = 0;
        if (!*line || *line == '#') continue;
        if (*n_keys >= SERVE_MAX_KEYS) {
            cli_error(cmd, "at most %d API keys", SERVE_MAX_KEYS);
            return false;
        }
        keys[(*n_keys)++] = line;
    }
    return true;
}

int cmd_serve(int argc, char **argv) {
    const char *cmd = "serve", *model_path = SPUD_DEFAULT_MODEL_PATH, *alias = NULL;
    char *keys[SERVE_MAX_KEYS], *key_file_text = NULL;
    size_t n_keys = 0;
    int64_t v;
    float shutdown_timeout = 10;
    spud_server_params sp = {.host = "127.0.0.1", .port = 8080};
    spud_engine_params ep = {.n_parallel = 4};
    spud_model_params mp = spud_model_default_params();
    int rc = 1;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            serve_usage(stdout);
            return 0;
        }
        if (!val) {
            cli_error(cmd, "unknown option or missing value: '%s' (see spud serve --help)", a);
            return 2;
        }
        i++;
        if (!strcmp(a, "-m")) {
            model_path = val;
        } else if (!strcmp(a, "--host")) {
            sp.host = val;
        } else if (!strcmp(a, "--port")) {
            if (!cli_parse_i64(cmd, a, val, 0, 65535, &v)) return 2;
            sp.port = (uint16_t)v;
        } else if (!strcmp(a, "--parallel")) {
            if (!cli_parse_i64(cmd, a, val, 1, 256, &v)) return 2;
            ep.n_parallel = (int32_t)v;
        } else if (!strcmp(a, "--ctx-size") || !strcmp(a, "-c")) {
            if (!cli_parse_i64(cmd, a, val, 1, UINT32_MAX, &v)) return 2;
            ep.n_ctx = (uint32_t)v;
        } else if (!strcmp(a, "-t")) {
            if (!cli_parse_i64(cmd, a, val, 1, 1024, &v)) return 2;
            mp.n_threads = (int32_t)v;
        } else if (!strcmp(a, "--api-key")) {
            if (!*val || n_keys >= SERVE_MAX_KEYS) {
                cli_error(cmd, "--api-key needs a non-empty key (at most %d keys)", SERVE_MAX_KEYS);
                return 2;
            }
            keys[n_keys++] = (char *)val;
        } else if (!strcmp(a, "--api-key-file")) {
            if (key_file_text) {
                cli_error(cmd, "--api-key-file may be given once");
                return 2;
            }
            if (!read_keys(cmd, val, keys, &n_keys, &key_file_text)) {
                spud_free(key_file_text);
                return 2;
            }
        } else if (!strcmp(a, "--max-queue")) {
            if (!cli_parse_i64(cmd, a, val, 1, 1 << 20, &v)) return 2;
            ep.max_queue = (int32_t)v;
        } else if (!strcmp(a, "--max-body")) {
            if (!cli_parse_i64(cmd, a, val, 1, (int64_t)1 << 30, &v)) return 2; /* the JSON parser takes an int */
            sp.max_body = (size_t)v;
        } else if (!strcmp(a, "--prefill-chunk")) {
            if (!cli_parse_i64(cmd, a, val, 1, 256, &v)) return 2;
            ep.prefill_chunk = (int32_t)v;
        } else if (!strcmp(a, "--alias")) {
            alias = val;
        } else if (!strcmp(a, "--store-bytes")) {
            if (!cli_parse_i64(cmd, a, val, 1, (int64_t)1 << 40, &v)) return 2;
            sp.store_bytes = (size_t)v;
        } else if (!strcmp(a, "--shutdown-timeout")) {
            if (!cli_parse_f32(cmd, a, val, &shutdown_timeout) || shutdown_timeout < 0) return 2;
        } else {
            cli_error(cmd, "unknown option '%s' (see spud serve --help)", a);
            spud_free(key_file_text);
            return 2;
        }
    }
    if (key_file_text && n_keys == 0) {
        cli_error(cmd, "--api-key-file holds no keys");
        spud_free(key_file_text);
        return 2;
    }
    if (!alias) {
        const char *slash = strrchr(model_path, '/');
        alias = slash ? slash + 1 : model_path;
    }
    sp.model_id = alias;
    sp.api_keys = (const char *const *)keys;
    sp.n_api_keys = n_keys;

    /* Signals go to sigwait below: block them before any thread starts. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    spud_server *srv = NULL;
    spud_model *model = NULL;
    if (spud_server_start(&sp, &srv)) {
        cli_error(cmd, "%s", spud_last_error());
        goto done;
    }
    fprintf(stderr, "spud serve: listening on http://%s%s%s:%u\n", strchr(sp.host, ':') ? "[" : "", sp.host,
            strchr(sp.host, ':') ? "]" : "", (unsigned)spud_server_port(srv));
    fflush(stderr);
    double t0 = spud_time_s();
    if (spud_model_load(model_path, &mp, &model) == SPUD_OK && ep.n_ctx == 0) {
        ep.n_ctx = spud_model_n_ctx_train(model);
        if (ep.n_ctx == 0 || ep.n_ctx > 4096) ep.n_ctx = 4096;
    }
    if (!model || spud_server_set_model(srv, model, &ep)) {
        cli_error(cmd, "%s", spud_last_error());
        spud_server_shutdown(srv, 0);
        goto done;
    }
    fprintf(stderr, "spud serve: ready in %.1f s: %s, %d sequences of %u tokens\n", spud_time_s() - t0, alias,
            (int)ep.n_parallel, (unsigned)ep.n_ctx);
    fflush(stderr);

    int sig = 0;
    while (sigwait(&sigs, &sig) != 0) {
    }
    fprintf(stderr, "spud serve: %s: finishing running requests (up to %.0f s)\n",
            sig == SIGINT ? "SIGINT" : "SIGTERM", (double)shutdown_timeout);
    fflush(stderr);
    spud_server_shutdown(srv, shutdown_timeout);
    fprintf(stderr, "spud serve: stopped\n");
    rc = 0;
done:
    spud_server_free(srv);
    spud_model_free(model);
    spud_free(key_file_text);
    return rc;
}
