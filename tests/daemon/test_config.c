/* test_config.c - inferd.conf parsing, flags, validation and the cluster
 * settings (daemon/config.c). */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/cpu.h"
#include "config.h"
#include "tools.h"
#include "layer_split.h"

static int parse(struct inferd_config *c, const char *text, ifd_error *err)
{
    inferd_config_init(c);
    return inferd_config_parse_string(c, text, "test.conf", err);
}

static char *write_tmp(const char *text)
{
    char *path = strdup("/tmp/inferd-test-conf-XXXXXX");
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    return path;
}

/* Runs inferd_config_load over a NULL-terminated argv list. */
static int load(struct inferd_config *c, struct inferd_cli *cli, ifd_error *err, const char **args)
{
    char *argv[64];
    int argc = 0;
    argv[argc++] = "inferd";
    for (const char **a = args; *a; a++)
        argv[argc++] = (char *)*a;
    argv[argc] = NULL;
    return inferd_config_load(argc, argv, c, cli, err);
}

Test(config, full_file)
{
    struct inferd_config c;
    ifd_error err = {{0}};
    int r = parse(&c,
                  "[server]\nlisten = 0.0.0.0:9000\napi_keys = k1, k2\nmax_body_bytes = 2M\nqueue_depth = 5\n"
                  "max_sequences = 4\ncontext_length = 1024\nprefill_chunk = 64\nprefix_cache = off\n"
                  "log_level = debug\n"
                  "[model]\npath = /models/x\nchat_template = /t.jinja\nquantize = q8\nquantize_group_size = 32\n"
                  "[node]\nrole = master\nbackend = cpu\ndevice = 2\nthreads = 3\ncache_dir = /var/cache/x\n"
                  "[cluster]\nkey_file = /etc/inferd/cluster.key\nallow_insecure = true\n"
                  "[worker.gpu1]\naddress = 10.0.0.2:10128\nlayers = 0-11\n"
                  "[worker.gpu2]\naddress = 10.0.0.3\nlayers = auto\n",
                  &err);
    cr_assert_eq(r, 0, "%s", err.msg);
    cr_assert_str_eq(c.listen, "0.0.0.0:9000");
    cr_assert_eq(c.n_api_keys, 2);
    cr_assert_str_eq(c.api_keys[1], "k2");
    cr_assert_eq(c.max_body_bytes, 2u << 20);
    cr_assert_eq(c.queue_depth, 5);
    cr_assert_eq(c.max_seqs, 4);
    cr_assert_eq(c.ctx_len, 1024);
    cr_assert_eq(c.prefill_chunk, 64);
    cr_assert(!c.prefix_cache);
    cr_assert_eq(c.log_level, 7);
    cr_assert_str_eq(c.model_path, "/models/x");
    cr_assert_str_eq(c.chat_template_path, "/t.jinja");
    cr_assert_eq(c.backend, INFERD_BACKEND_CPU);
    cr_assert_eq(c.device, 2);
    cr_assert_eq(c.quantize_bits, 8);
    cr_assert_eq(c.quantize_group_size, 32);
    cr_assert_eq(c.threads, 3);
    cr_assert_str_eq(c.cache_dir, "/var/cache/x");
    cr_assert_str_eq(c.cluster_key_file, "/etc/inferd/cluster.key");
    cr_assert(c.allow_insecure_cluster);
    cr_assert_eq(c.n_workers, 2);
    cr_assert_str_eq(c.workers[0].name, "gpu1");
    cr_assert_str_eq(c.workers[0].address, "10.0.0.2:10128");
    /* FIRST-LAST inclusive in the file, [first, last) in the struct. */
    cr_assert_eq(c.workers[0].layer_first, 0);
    cr_assert_eq(c.workers[0].layer_last, 12);
    cr_assert(!c.workers[0].auto_layers);
    cr_assert(c.workers[1].auto_layers);
    cr_assert_eq(inferd_config_validate(&c, &err), 0, "%s", err.msg);
    cr_assert_eq(inferd_config_validate_layers(&c, 24, &err), 0, "%s", err.msg);
    cr_assert_lt(inferd_config_validate_layers(&c, 10, &err), 0);
    cr_assert(strstr(err.msg, "gpu1") && strstr(err.msg, "10 layers"), "%s", err.msg);
    inferd_config_finish(&c);
}

Test(config, defaults)
{
    struct inferd_config c;
    inferd_config_init(&c);
    cr_assert_str_eq(c.listen, "127.0.0.1:8080");
    cr_assert_eq(c.role, INFERD_ROLE_MASTER);
    cr_assert_eq(c.backend, INFERD_BACKEND_AUTO);
    cr_assert_str_eq(c.cache_dir, "/var/cache/inferd");
    cr_assert(!c.allow_insecure_cluster);
    cr_assert(c.prefix_cache);
    cr_assert_eq(c.n_workers, 0);
    inferd_config_finish(&c);
    inferd_config_finish(&c); /* twice: a zeroed struct is fine */
}

struct bad_case {
    const char *text;
    const char *expect; /* substring of the message */
};

Test(config, bad_values_name_line_and_key)
{
    static const struct bad_case cases[] = {
        {"[server]\nqueue_depth = lots\n", "test.conf:2: [server] queue_depth: 'lots' is not an integer"},
        {"[server]\nmax_sequences = 0\n", "out of range"},
        {"[server]\nmax_body_bytes = 12Q\n", "not a size"},
        {"[server]\nlisten = host:99999\n", "bad port"},
        {"[server]\nlog_level = loud\n", "not a log level"},
        {"[server]\nlisten_adress = x\n", "unknown key"},
        {"[nodes]\nrole = master\n", "unknown section [nodes]"},
        {"[node]\nrole = boss\n", "not a role"},
        {"[node]\nbackend = cuda\n", "not a backend"},
        {"[node]\ndevice = -1\n", "out of range"},
        {"[model]\nquantize = q5\n", "not a quantization"},
        {"[model]\nreasoning = maybe\n", "test.conf:2: [model] reasoning: 'maybe' is not auto, none or think"},
        {"[model.x]\npath = /m\nreasoning = yes\n", "is not auto, none or think"},
        {"[cluster]\nallow_insecure = maybe\n", "not a boolean"},
        {"[server]\nprefix_cache = sometimes\n", "test.conf:2: [server] prefix_cache: 'sometimes' is not a boolean"},
        {"[worker.a]\nlayers = 5-2\n", "last layer before first"},
        {"[worker.a]\nlayers = x\n", "FIRST-LAST"},
        {"[worker.a]\nport = 3\n", "unknown key"},
        {"[server]\nthis is not ini\n", "test.conf:2"},
        {"[server]\napi_keys = a\x01" "b\n", "control characters"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct inferd_config c;
        ifd_error err = {{0}};
        int r = parse(&c, cases[i].text, &err);
        cr_expect_lt(r, 0, "case %zu accepted", i);
        cr_expect(strstr(err.msg, cases[i].expect), "case %zu: '%s' lacks '%s'", i, err.msg, cases[i].expect);
        inferd_config_finish(&c);
    }
}

/* A worker's bound on its layers means nothing to a master: refused, not ignored. */
Test(config, memory_max_bytes_is_for_workers)
{
    struct inferd_config c;
    ifd_error err = {{0}};
    cr_assert_eq(parse(&c, "[model]\npath=/m\n[node]\nmemory_max_bytes = 1G\n", &err), 0, "%s", err.msg);
    cr_assert_lt(inferd_config_validate(&c, &err), 0);
    cr_assert(strstr(err.msg, "[node] memory_max_bytes is for role=worker"), "%s", err.msg);
    inferd_config_finish(&c);
    cr_assert_eq(parse(&c, "[node]\nrole = worker\nmemory_max_bytes = 1G\n", &err), 0, "%s", err.msg);
    cr_assert_eq(inferd_config_validate(&c, &err), 0, "%s", err.msg);
    inferd_config_finish(&c);
}

Test(config, overlapping_workers_are_an_error)
{
    struct inferd_config c;
    ifd_error err = {{0}};
    cr_assert_eq(parse(&c,
                       "[model]\npath=/m\n[worker.a]\naddress=h1:1\nlayers=0-5\n[worker.b]\naddress=h2:1\nlayers=5-9\n",
                       &err), 0, "%s", err.msg);
    cr_assert_lt(inferd_config_validate(&c, &err), 0);
    cr_assert(strstr(err.msg, "overlap"), "%s", err.msg);
    inferd_config_finish(&c);

    cr_assert_eq(parse(&c, "[model]\npath=/m\n[worker.a]\nlayers=0-5\n", &err), 0);
    cr_assert_lt(inferd_config_validate(&c, &err), 0);
    cr_assert(strstr(err.msg, "no address"), "%s", err.msg);
    inferd_config_finish(&c);
}

Test(config, standby_workers_and_failover)
{
    struct inferd_config c;
    ifd_error err = {{0}};
    cr_assert_eq(parse(&c, "[model]\npath=/m\n[cluster]\nfailover_timeout = 12\nfailover_memory = 2G\n"
                           "[worker.a]\naddress=h1:1\nlayers=0-5\n[worker.s]\naddress=h2:1\nstandby = true\n",
                       &err), 0, "%s", err.msg);
    cr_assert_eq(inferd_config_validate(&c, &err), 0, "%s", err.msg);
    cr_assert_eq(inferd_config_validate_layers(&c, 6, &err), 0, "%s", err.msg);
    cr_assert_eq(c.cluster_failover_timeout_s, 12);
    cr_assert_eq(c.cluster_failover_memory, (int64_t)2 << 30);
    cr_assert_eq(c.n_workers, 2);
    cr_assert(!c.workers[0].standby);
    cr_assert(c.workers[1].standby);
    inferd_config_finish(&c);

    /* the defaults: 30 s, the master's available memory (-1) */
    cr_assert_eq(parse(&c, "[model]\npath=/m\n", &err), 0, "%s", err.msg);
    cr_assert_eq(c.cluster_failover_timeout_s, 30);
    cr_assert_eq(c.cluster_failover_memory, -1);
    inferd_config_finish(&c);

    /* a standby holds no layers; a worker needs layers or standby */
    cr_assert_eq(parse(&c, "[model]\npath=/m\n[worker.s]\naddress=h2:1\nlayers=0-1\nstandby=true\n", &err), 0);
    cr_assert_lt(inferd_config_validate(&c, &err), 0);
    cr_assert(strstr(err.msg, "standby worker holds no layers"), "%s", err.msg);
    inferd_config_finish(&c);
    cr_assert_eq(parse(&c, "[model]\npath=/m\n[worker.s]\naddress=h2:1\nstandby=false\n", &err), 0);
    cr_assert_lt(inferd_config_validate(&c, &err), 0);
    cr_assert(strstr(err.msg, "no layers"), "%s", err.msg);
    inferd_config_finish(&c);

    cr_assert_lt(parse(&c, "[worker.s]\nstandby = perhaps\n", &err), 0);
    cr_assert(strstr(err.msg, "not a boolean"), "%s", err.msg);
    inferd_config_finish(&c);
    cr_assert_lt(parse(&c, "[cluster]\nfailover_timeout = 0\n", &err), 0);
    cr_assert(strstr(err.msg, "failover_timeout"), "%s", err.msg);
    inferd_config_finish(&c);
    cr_assert_lt(parse(&c, "[worker.s]\nlayers = standby\n", &err), 0, "standby is a key in a file, not a range");
    inferd_config_finish(&c);

    /* --worker ADDR=standby */
    struct inferd_cli cli;
    const char *args[] = {"--model", "/m", "--worker", "127.0.0.1:1=0-1", "--worker", "127.0.0.1:2=standby", NULL};
    cr_assert_eq(load(&c, &cli, &err, args), 0, "%s", err.msg);
    cr_assert_eq(c.n_workers, 2);
    cr_assert(c.workers[1].standby);
    cr_assert_eq(c.workers[1].layer_first, -1);
    cr_assert_eq(inferd_config_validate(&c, &err), 0, "%s", err.msg);
    inferd_config_finish(&c);
}

Test(config, flags_override_file)
{
    char *path = write_tmp("[server]\nlisten = 127.0.0.1:7000\nqueue_depth = 3\n[model]\npath = /from/file\n");
    struct inferd_config c;
    struct inferd_cli cli;
    ifd_error err = {{0}};
    const char *args[] = {"--config", path, "--model", "/from/flag", "--listen", "127.0.0.1:7001", "--threads", "2",
                          "--worker", "10.1.1.1:10128=0-3", "--worker", "10.1.1.2=4-7", "--cluster-key-file", "/k",
                          "--allow-insecure-cluster", "--check-config", NULL};
    int r = load(&c, &cli, &err, args);
    cr_assert_eq(r, 0, "%s", err.msg);
    cr_assert(cli.check_config);
    cr_assert_str_eq(c.model_path, "/from/flag");
    cr_assert_str_eq(c.listen, "127.0.0.1:7001");
    cr_assert_eq(c.queue_depth, 3);
    cr_assert_eq(c.threads, 2);
    cr_assert_eq(c.n_workers, 2);
    cr_assert_str_eq(c.workers[1].address, "10.1.1.2");
    cr_assert_eq(c.workers[1].layer_first, 4);
    cr_assert_eq(c.workers[1].layer_last, 8);
    cr_assert_str_eq(c.cluster_key_file, "/k");
    cr_assert(c.allow_insecure_cluster);
    inferd_config_finish(&c);
    unlink(path);
    free(path);
}

Test(config, worker_role_listen)
{
    struct inferd_config c;
    struct inferd_cli cli;
    ifd_error err = {{0}};
    const char *args[] = {"--config", "/nonexistent-is-checked-below", NULL};
    cr_assert_lt(load(&c, &cli, &err, args), 0, "an explicit missing config file must fail");
    cr_assert(strstr(err.msg, "/nonexistent-is-checked-below"), "%s", err.msg);

    const char *args2[] = {"--role", "worker", "--listen", "0.0.0.0:10200", NULL};
    cr_assert_eq(load(&c, &cli, &err, args2), 0, "%s", err.msg);
    cr_assert_eq(c.role, INFERD_ROLE_WORKER);
    cr_assert_str_eq(c.worker_listen, "0.0.0.0:10200");
    cr_assert_str_eq(c.listen, "127.0.0.1:8080", "--listen is the worker address for role=worker");
    inferd_config_finish(&c);

    const char *args3[] = {"--role", "worker", NULL};
    cr_assert_eq(load(&c, &cli, &err, args3), 0, "%s", err.msg);
    cr_assert_str_eq(c.worker_listen, "0.0.0.0:10128");
    inferd_config_finish(&c);
}

Test(config, bad_flags)
{
    struct inferd_config c;
    struct inferd_cli cli;
    ifd_error err = {{0}};
    const char *a1[] = {"--bogus", NULL};
    cr_assert_lt(load(&c, &cli, &err, a1), 0);
    cr_assert(strstr(err.msg, "--bogus"), "%s", err.msg);
    const char *a2[] = {"--model", NULL};
    cr_assert_lt(load(&c, &cli, &err, a2), 0);
    const char *a3[] = {"--model", "/m", "--threads", "-1", NULL};
    cr_assert_lt(load(&c, &cli, &err, a3), 0);
    cr_assert(strstr(err.msg, "--threads"), "%s", err.msg);
    const char *a4[] = {"--model", "/m", "--worker", "nohost", NULL};
    cr_assert_lt(load(&c, &cli, &err, a4), 0);
    cr_assert(strstr(err.msg, "--worker"), "%s", err.msg);
    const char *a5[] = {NULL};
    cr_assert_lt(load(&c, &cli, &err, a5), 0, "no model is an error for a master");
    cr_assert(strstr(err.msg, "no model"), "%s", err.msg);
}

Test(config, key_file)
{
    char *keys = write_tmp("# operators\nalpha\n\n  beta  \n");
    char text[256];
    snprintf(text, sizeof(text), "[server]\napi_key_file = %s\napi_keys = inline\n[model]\npath=/m\n", keys);
    char *conf = write_tmp(text);
    struct inferd_config c;
    struct inferd_cli cli;
    ifd_error err = {{0}};
    const char *args[] = {"-c", conf, NULL};
    cr_assert_eq(load(&c, &cli, &err, args), 0, "%s", err.msg);
    cr_assert_eq(c.n_api_keys, 3);
    cr_assert_str_eq(c.api_keys[0], "inline");
    cr_assert_str_eq(c.api_keys[1], "alpha");
    cr_assert_str_eq(c.api_keys[2], "beta");
    inferd_config_finish(&c);
    unlink(keys);
    unlink(conf);
    free(keys);
    free(conf);
}

Test(config, hostport)
{
    char *h;
    int p;
    ifd_error err;
    cr_assert_eq(inferd_config_split_hostport("[::1]:8080", 1, &h, &p, &err), 0);
    cr_assert_str_eq(h, "::1");
    cr_assert_eq(p, 8080);
    free(h);
    cr_assert_eq(inferd_config_split_hostport("example.org", 10128, &h, &p, &err), 0);
    cr_assert_str_eq(h, "example.org");
    cr_assert_eq(p, 10128);
    free(h);
    cr_assert_lt(inferd_config_split_hostport("::1:80", 1, &h, &p, &err), 0);
    cr_assert_lt(inferd_config_split_hostport(":80", 1, &h, &p, &err), 0);
    cr_assert_lt(inferd_config_split_hostport("h:0", 1, &h, &p, &err), 0);
}

Test(config, hf_cache_name)
{
    char dir[] = "/tmp/inferd-hub-XXXXXX";
    cr_assert(mkdtemp(dir));
    char cmd[512];
    /* A ref holds a full 40-hex commit sha, as the Hub writes it. */
    const char *commit = "0123456789abcdef0123456789abcdef01234567";
    snprintf(cmd, sizeof(cmd), "mkdir -p %s/models--org--name/refs %s/models--org--name/snapshots/%s && "
                               "printf %s > %s/models--org--name/refs/main", dir, dir, commit, commit, dir);
    cr_assert_eq(system(cmd), 0);
    setenv("HF_HUB_CACHE", dir, 1);
    char *out = NULL;
    ifd_error err = {{0}};
    cr_assert_eq(inferd_config_resolve_model("org/name", &out, &err), 0, "%s", err.msg);
    char want[256];
    snprintf(want, sizeof(want), "%s/models--org--name/snapshots/%s", dir, commit);
    cr_assert_str_eq(out, want);
    free(out);
    cr_assert_lt(inferd_config_resolve_model("org/missing", &out, &err), 0);
    cr_assert(strstr(err.msg, "org/missing"), "%s", err.msg);
    cr_assert(strstr(err.msg, "inferctl model pull org/missing"), "%s", err.msg);
    cr_assert_lt(inferd_config_resolve_model("/no/such/dir", &out, &err), 0);
    /* A revision: the commit itself, and a ref that is not there. */
    char *spec = NULL;
    cr_assert(asprintf(&spec, "org/name@%s", commit) > 0);
    cr_assert_eq(inferd_config_resolve_model(spec, &out, &err), 0, "%s", err.msg);
    cr_assert_str_eq(out, want);
    free(out);
    free(spec);
    cr_assert_lt(inferd_config_resolve_model("org/name@v2", &out, &err), 0);
    cr_assert(strstr(err.msg, "refs/v2"), "%s", err.msg);
    cr_assert_lt(inferd_config_resolve_model("org/../etc", &out, &err), 0);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    cr_assert_eq(system(cmd), 0);
}

/* ---- layers = auto ---------------------------------------------------------- */

static void expect_split(int n, int k, const double *speed, const int *max_layers, const int *want)
{
    int got[8];
    cr_assert_eq(layer_split(n, k, speed, max_layers, got), 0, "n %d k %d", n, k);
    int sum = 0;
    for (int i = 0; i < k; i++) {
        cr_expect_eq(got[i], want[i], "n %d: worker %d gets %d layers, want %d", n, i, got[i], want[i]);
        cr_expect(got[i] >= 1 && got[i] <= max_layers[i]);
        sum += got[i];
    }
    cr_expect_eq(sum, n);
}

Test(config, layer_split_by_speed_within_memory)
{
    const int any[] = {1000, 1000, 1000};
    /* Equal speeds: even, the remainder to the earliest. */
    expect_split(24, 2, (const double[]){1, 1}, any, (const int[]){12, 12});
    expect_split(7, 3, (const double[]){5, 5, 5}, any, (const int[]){3, 2, 2});
    /* Twice as fast, twice the layers. */
    expect_split(24, 2, (const double[]){20000, 10000}, any, (const int[]){16, 8});
    /* Largest remainder: 28 * (3, 2, 2) / 7 = 12, 8, 8; 10 * that = 4.3, 2.9, 2.9. */
    expect_split(28, 3, (const double[]){3, 2, 2}, any, (const int[]){12, 8, 8});
    expect_split(10, 3, (const double[]){3, 2, 2}, any, (const int[]){4, 3, 3});
    /* The fast worker holds only 5 layers: the rest goes to the others by speed. */
    expect_split(24, 3, (const double[]){10, 2, 1}, (const int[]){5, 1000, 1000}, (const int[]){5, 13, 6});
    /* A very slow worker still gets one layer. */
    expect_split(10, 2, (const double[]){1000, 1}, any, (const int[]){9, 1});
    /* Exactly enough memory. */
    expect_split(6, 2, (const double[]){1, 100}, (const int[]){3, 3}, (const int[]){3, 3});
}

Test(config, layer_split_refusals)
{
    int got[4];
    cr_expect_eq(layer_split(6, 2, (const double[]){1, 1}, (const int[]){2, 3}, got), -ENOSPC, "5 layers of room for 6");
    cr_expect_eq(layer_split(6, 2, (const double[]){1, 1}, (const int[]){0, 9}, got), -ENOSPC, "no room for one layer");
    cr_expect_eq(layer_split(1, 2, (const double[]){1, 1}, (const int[]){9, 9}, got), -EINVAL, "fewer layers than workers");
    cr_expect_eq(layer_split(3, 0, NULL, NULL, got), -EINVAL);
}

Test(config, api_key_on_command_line_is_refused)
{
    struct inferd_config c;
    struct inferd_cli cli;
    ifd_error err = {{0}};
    const char *args[] = {"--model", "/m", "--api-key", "sk-secret", NULL};
    cr_assert_lt(load(&c, &cli, &err, args), 0);
    cr_assert(strstr(err.msg, "--api-key-file"), "points to the file: %s", err.msg);
    cr_assert(strstr(err.msg, "/proc"), "says why: %s", err.msg);
    cr_assert_null(strstr(err.msg, "sk-secret"), "does not echo the key: %s", err.msg);
}

static int load_key_file(const char *keys, mode_t mode, struct inferd_config *c, ifd_error *err)
{
    char *path = write_tmp(keys);
    cr_assert_eq(chmod(path, mode), 0);
    struct inferd_cli cli;
    const char *args[] = {"--model", "/m", "--api-key-file", path, NULL};
    int r = load(c, &cli, err, args);
    unlink(path);
    free(path);
    return r;
}

Test(config, api_key_file_must_be_private)
{
    struct inferd_config c;
    ifd_error err = {{0}};
    cr_assert_eq(load_key_file("k1\n", 0600, &c, &err), 0, "%s", err.msg);
    cr_assert_eq(c.n_api_keys, 1);
    inferd_config_finish(&c);
    cr_assert_eq(load_key_file("k1\n", 0400, &c, &err), 0, "%s", err.msg);
    inferd_config_finish(&c);
    /* Our own file, readable by the group: refused, as sshd refuses keys. */
    cr_assert_eq(load_key_file("k1\n", 0640, &c, &err), -EPERM);
    cr_assert(strstr(err.msg, "group") && strstr(err.msg, "0640") && strstr(err.msg, "chmod 600"), "%s", err.msg);
    /* Readable or writable by others: always refused. */
    cr_assert_eq(load_key_file("k1\n", 0604, &c, &err), -EPERM);
    cr_assert(strstr(err.msg, "others"), "%s", err.msg);
    cr_assert_eq(load_key_file("k1\n", 0602, &c, &err), -EPERM);
    /* Not a regular file. */
    struct inferd_cli cli;
    const char *args[] = {"--model", "/m", "--api-key-file", "/tmp", NULL};
    cr_assert_lt(load(&c, &cli, &err, args), 0);
    cr_assert(strstr(err.msg, "regular file"), "%s", err.msg);
}

Test(config, config_file_with_keys_must_be_private)
{
    char *path = write_tmp("[server]\napi_keys = sk-inline\n[model]\npath = /m\n");
    struct inferd_config c;
    struct inferd_cli cli;
    ifd_error err = {{0}};
    const char *args[] = {"-c", path, NULL};
    cr_assert_eq(load(&c, &cli, &err, args), 0, "%s", err.msg);
    inferd_config_finish(&c);
    cr_assert_eq(chmod(path, 0644), 0);
    cr_assert_eq(load(&c, &cli, &err, args), -EPERM);
    cr_assert(strstr(err.msg, "api_keys") && strstr(err.msg, "0644") && strstr(err.msg, "api_key_file"), "%s",
              err.msg);
    /* Without keys the file may be world-readable, as packaged. */
    char *plain = write_tmp("[server]\nqueue_depth = 3\n[model]\npath = /m\n");
    cr_assert_eq(chmod(plain, 0644), 0);
    const char *args2[] = {"-c", plain, NULL};
    cr_assert_eq(load(&c, &cli, &err, args2), 0, "%s", err.msg);
    inferd_config_finish(&c);
    unlink(path);
    unlink(plain);
    free(path);
    free(plain);
}

Test(config, connection_and_parse_limits)
{
    struct inferd_config c;
    ifd_error err = {{0}};
    inferd_config_init(&c);
    cr_assert_eq(c.max_connections, 512);
    cr_assert_eq(c.max_connections_per_ip, 32);
    cr_assert_eq(c.request_timeout_s, 60);
    cr_assert_eq(c.parse_memory, (size_t)512 << 20);
    cr_assert_eq(c.max_tokenize_bytes, (size_t)256 << 10);
    inferd_config_finish(&c);
    int r = parse(&c, "[server]\nmax_connections = 2000\nmax_connections_per_ip = 0\nrequest_timeout = 5\n"
                      "parse_memory = 1G\nmax_tokenize_bytes = 64K\n", &err);
    cr_assert_eq(r, 0, "%s", err.msg);
    cr_assert_eq(c.max_connections, 2000);
    cr_assert_eq(c.max_connections_per_ip, 0);
    cr_assert_eq(c.request_timeout_s, 5);
    cr_assert_eq(c.parse_memory, (size_t)1 << 30);
    cr_assert_eq(c.max_tokenize_bytes, (size_t)64 << 10);
    inferd_config_finish(&c);
    const char *bad[] = {"[server]\nmax_connections = 0\n", "[server]\nrequest_timeout = 0\n",
                         "[server]\nmax_connections_per_ip = -1\n", "[server]\nparse_memory = 1K\n",
                         "[server]\nmax_tokenize_bytes = 12\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_assert_lt(parse(&c, bad[i], &err), 0, "%s", bad[i]);
        const char *key = strchr(bad[i], '\n') + 1;
        char name[32];
        snprintf(name, sizeof(name), "%.*s", (int)(strchr(key, ' ') - key), key);
        cr_assert(strstr(err.msg, name), "error names %s: %s", name, err.msg);
    }
}

/* The worker's hardening keys (issue 12): quota, receive deadline, next hops. */
Test(config, worker_cluster_limits)
{
    struct inferd_config c;
    ifd_error err = {{0}};
    cr_assert_eq(parse(&c, "[node]\n", &err), 0, "%s", err.msg);
    cr_assert_eq(c.cache_max_bytes, 0, "default quota: half of the file system (0)");
    cr_assert_eq(c.memory_max_bytes, 0, "default: the memory the machine has available");
    cr_assert_eq(c.cluster_io_timeout_s, 30, "docs/protocol.md promises 30 s");
    cr_assert_eq(c.n_next_hops, 0);
    inferd_config_finish(&c);
    cr_assert_eq(parse(&c, "[node]\ncache_max_bytes = 10G\nmemory_max_bytes = 512M\n[cluster]\nio_timeout = 5\n"
                           "next_hops = 10.0.0.2:10128, 10.0.0.3 [::1]:7\n", &err), 0, "%s", err.msg);
    cr_assert_eq(c.cache_max_bytes, (size_t)10 << 30);
    cr_assert_eq(c.memory_max_bytes, (size_t)512 << 20);
    cr_assert_eq(c.cluster_io_timeout_s, 5);
    cr_assert_eq(c.n_next_hops, 3);
    cr_assert_str_eq(c.next_hops[0], "10.0.0.2:10128");
    cr_assert_str_eq(c.next_hops[1], "10.0.0.3");
    cr_assert_str_eq(c.next_hops[2], "[::1]:7");
    inferd_config_finish(&c);
    static const struct bad_case bad[] = {
        {"[cluster]\nio_timeout = 0\n", "[cluster] io_timeout"},
        {"[cluster]\nio_timeout = 3601\n", "out of range"},
        {"[cluster]\nnext_hops = host:99999\n", "bad port"},
        {"[node]\ncache_max_bytes = 1T\n", "[node] cache_max_bytes"},
        {"[node]\nmemory_max_bytes = lots\n", "[node] memory_max_bytes"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&err, 0, sizeof(err));
        cr_expect_lt(parse(&c, bad[i].text, &err), 0, "case %zu accepted", i);
        cr_expect(strstr(err.msg, bad[i].expect), "case %zu: '%s' lacks '%s'", i, err.msg, bad[i].expect);
        inferd_config_finish(&c);
    }
}

/* [node] simd / --simd: auto, or a level this CPU has; a level it lacks is
 * refused at load (it would die on an illegal instruction), naming the key. */
Test(config, simd_level)
{
    struct inferd_config c;
    struct inferd_cli cli;
    ifd_error err = {{0}};
    inferd_config_init(&c);
    cr_assert_eq(c.simd, -1, "auto by default");
    inferd_config_finish(&c);
    cr_assert_eq(parse(&c, "[node]\nsimd = scalar\n", &err), 0, "%s", err.msg);
    cr_assert_eq(c.simd, CPU_SIMD_SCALAR);
    inferd_config_finish(&c);
    cr_assert_eq(parse(&c, "[node]\nsimd = auto\n", &err), 0, "%s", err.msg);
    cr_assert_eq(c.simd, -1);
    inferd_config_finish(&c);
    cr_assert_lt(parse(&c, "[node]\nsimd = neon\n", &err), 0);
    cr_assert(strstr(err.msg, "simd") && strstr(err.msg, "neon"), "%s", err.msg);
    inferd_config_finish(&c);
    for (int l = 0; l < CPU_SIMD_COUNT; l++) {
        char text[64];
        snprintf(text, sizeof(text), "[node]\nsimd = %s\n", cpu_simd_name((enum cpu_simd)l));
        int r = parse(&c, text, &err);
        if (cpu_simd_supported((enum cpu_simd)l)) {
            cr_assert_eq(r, 0, "%s: %s", text, err.msg);
            cr_assert_eq(c.simd, l);
        } else {
            cr_assert_eq(r, -ENOTSUP, "%s", text);
            cr_assert(strstr(err.msg, "this CPU cannot run"), "%s", err.msg);
        }
        inferd_config_finish(&c);
    }
    const char *a[] = {"--model", "/m", "--simd", "avx3", NULL};
    cr_assert_lt(load(&c, &cli, &err, a), 0);
    cr_assert(strstr(err.msg, "--simd"), "%s", err.msg);
    const char *b[] = {"--model", "/m", "--simd", "scalar", NULL};
    cr_assert_eq(load(&c, &cli, &err, b), 0, "%s", err.msg);
    cr_assert_eq(c.simd, CPU_SIMD_SCALAR);
    inferd_config_finish(&c);
}

/* The engine's positions per sequence: what main.c gives the engine and
 * `inferctl model info` assumes by default. */
Test(config, context_length_default_and_override)
{
    struct inferd_config c;
    cr_assert_eq(inferd_config_init(&c), 0);
    cr_assert_eq(inferd_config_context_length(&c, 512), 512, "the model's own context when it is small");
    cr_assert_eq(inferd_config_context_length(&c, 32768), INFERD_DEFAULT_CONTEXT_CAP, "capped");
    cr_assert_eq(inferd_config_context_length(&c, 0), INFERD_DEFAULT_CONTEXT_CAP, "the cap when the model says none");
    cr_assert_eq(INFERD_DEFAULT_CONTEXT_CAP, 4096);
    c.ctx_len = 100000;
    cr_assert_eq(inferd_config_context_length(&c, 512), 100000, "[server] context_length wins");
    inferd_config_finish(&c);
}

Test(config, reasoning_per_model)
{
    struct inferd_config c;
    ifd_error err = {{0}};
    int r = parse(&c, "[model]\npath = /m\nreasoning = none\n[model.r1]\npath = /r1\nreasoning = think\n"
                      "[model.q]\npath = /q\n", &err);
    cr_assert_eq(r, 0, "%s", err.msg);
    cr_assert_eq(c.reasoning, TOOLS_REASONING_NONE);
    cr_assert_eq(c.models[0].reasoning, TOOLS_REASONING_THINK);
    cr_assert_eq(c.models[1].reasoning, TOOLS_REASONING_AUTO, "auto by default");
    inferd_config_finish(&c);
}

Test(config, micro_batches)
{
    struct inferd_config c;
    ifd_error err = {{0}};
    inferd_config_init(&c);
    cr_assert_eq(c.micro_batches, 0, "the default is auto");
    inferd_config_finish(&c);
    static const struct {
        const char *text;
        int want;
    } ok[] = {
        {"[cluster]\nmicro_batches = auto\n", 0},
        {"[cluster]\nmicro_batches = 1\n", 1},
        {"[cluster]\nmicro_batches = 3\n", 3},
        {"[cluster]\nmicro_batches = 16\n", INFERD_MAX_MICRO_BATCHES},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        cr_assert_eq(parse(&c, ok[i].text, &err), 0, "%s", err.msg);
        cr_expect_eq(c.micro_batches, ok[i].want, "case %zu", i);
        inferd_config_finish(&c);
    }
    static const struct bad_case bad[] = {
        {"[cluster]\nmicro_batches = 0\n", "test.conf:2: [cluster] micro_batches: 0 is out of range [1, 16] (or 'auto')"},
        {"[cluster]\nmicro_batches = 17\n", "17 is out of range [1, 16]"},
        {"[cluster]\nmicro_batches = -2\n", "out of range"},
        {"[cluster]\nmicro_batches = Auto\n", "'Auto' is neither 'auto' nor a number of micro-batches"},
        {"[cluster]\nmicro_batches = 2x\n", "neither 'auto' nor a number"},
        {"[cluster]\nmicro_batches =\n", "micro_batches"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err.msg[0] = '\0';
        cr_expect_lt(parse(&c, bad[i].text, &err), 0, "case %zu accepted", i);
        cr_expect(strstr(err.msg, bad[i].expect), "case %zu: '%s' lacks '%s'", i, err.msg, bad[i].expect);
        inferd_config_finish(&c);
    }
    /* the flag is the key */
    struct inferd_cli cli;
    const char *args[] = {"--config", "/dev/null", "--model", "/m", "--micro-batches", "2", NULL};
    cr_assert_eq(load(&c, &cli, &err, args), 0, "%s", err.msg);
    cr_assert_eq(c.micro_batches, 2);
    inferd_config_finish(&c);
    const char *bad_args[] = {"--config", "/dev/null", "--model", "/m", "--micro-batches", "many", NULL};
    cr_expect_lt(load(&c, &cli, &err, bad_args), 0);
    cr_expect(strstr(err.msg, "--micro-batches: 'many' is neither"), "%s", err.msg);
    inferd_config_finish(&c);
}
