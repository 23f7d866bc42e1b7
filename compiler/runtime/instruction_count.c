/* A qemu TCG plugin that counts the guest instructions a process executes and writes the total
 * to the file named by its `out=PATH` argument when the process exits.
 *
 *   qemu-aarch64 -cpu cortex-a72 -plugin file=libedgec-instruction-count.so,out=/tmp/count ./binary
 *
 * compiler/runtime/instructions.py builds it with the host compiler and runs edgec's runner under
 * it. Each translated block adds its instruction count to one counter every time it executes, an
 * add that TCG emits inline (no call out of the generated code). The add is not atomic: count
 * single-threaded guests (TVM_NUM_THREADS=1), as edgec does.
 *
 * Debian ships qemu-user with plugin support but no plugin header, so the few declarations of
 * QEMU's plugin C API used here are written out below (API version 1, qemu 7.x; the names,
 * signatures and enum values are the ABI QEMU resolves at load time).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef uint64_t qemu_plugin_id_t;
typedef struct qemu_info_t qemu_info_t; /* read by nothing here */
struct qemu_plugin_tb;
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 = 0 };
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);

void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);

#define EXPORT __attribute__((visibility("default")))

EXPORT int qemu_plugin_version = 1;

static uint64_t executed;
static char out_path[4096];

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  (void)id;
  qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &executed, qemu_plugin_tb_n_insns(tb));
}

static void on_exit(qemu_plugin_id_t id, void *userdata) {
  (void)id;
  (void)userdata;
  FILE *out = fopen(out_path, "w");
  if (out != NULL) {
    fprintf(out, "%llu\n", (unsigned long long)executed);
    fclose(out);
  }
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv) {
  (void)info;
  for (int i = 0; i < argc; ++i) {
    if (strncmp(argv[i], "out=", 4) == 0 && strlen(argv[i] + 4) < sizeof(out_path)) {
      strcpy(out_path, argv[i] + 4);
    }
  }
  if (out_path[0] == '\0') {
    fprintf(stderr, "edgec instruction-count plugin: pass out=PATH\n");
    return 1;
  }
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
  qemu_plugin_register_atexit_cb(id, on_exit, NULL);
  return 0;
}
