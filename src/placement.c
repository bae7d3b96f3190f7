/* placement.c — binds the sync thread to the CPUs that take the interrupts
 * of the home's disk (durable mode), found through sysfs and
 * /proc/irq/N/effective_affinity_list; plus the CPU-list parsing it needs.
 *
 * Why.  Every group-commit fsync is two requests to the disk: the log's
 * pages, then a cache flush.  Their completions arrive as interrupts on
 * the CPUs the disk's interrupts are bound to; each wakes the sync thread,
 * and the kernel issues the flush from a kblockd worker on the CPU the
 * sync thread runs on.  Wherever the scheduler put it (often next to the
 * busy main thread, which woke it) each step waited.  Traced on the 2-CPU
 * test machine (virtio disk, its interrupts on CPU 1; durable set+get, 50
 * connections): from the write's completion to the flush's issue 86-139
 * us on average; one fsync under load 230 us.  Runs of 4 s, alternating
 * (50 connections / 1 connection):
 *   left to the scheduler                  118-120k ops/s / 11.4-12.1k, p99 216-383 us
 *   sync thread on the interrupts' CPU     129-135k      / 12.0k, p99 212-224 us
 *   main thread kept off that CPU          129-133k      / 6.8-8.1k, p99 460-600 us
 *   both                                   132-136k      / 8.2-8.8k
 *   sync thread on the other CPU           112-121k
 * and no scheduling class or nice value for the sync thread helped.  So
 * only the sync thread moves: it hardly uses CPU (1.1 us per op), and the
 * main thread stays free to go where the scheduler finds room.  -N has no
 * disk on its hot path: left alone.
 *
 * The choice is made once, when the sync thread starts: if the interrupts
 * move later (irqbalance), the thread is where "on the other CPU" above
 * put it, about as if nothing had been done; a restart chooses again.
 *
 * Nothing is done where it cannot help or the kernel does not say: a disk
 * with a queue (and interrupt) per CPU, as NVMe and multi-queue virtio
 * have, covers every CPU; tmpfs, device-mapper or a network filesystem has
 * no interrupts of its own in sysfs, nor has a controller on legacy
 * (non-MSI) interrupts.  The union may include a device's configuration
 * interrupt (virtio-config, an NVMe admin queue): that can only make it do
 * less. */
#include "placement.h"
#include "i18n.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

gboolean
mcq_cpu_list_parse (const char *text, cpu_set_t *set)
{
  g_auto(GStrv) parts = NULL;

  CPU_ZERO (set);
  if (text == NULL)
    return FALSE;
  g_autofree char *trimmed = g_strstrip (g_strdup (text));
  if (trimmed[0] == '\0')
    return FALSE;
  parts = g_strsplit (trimmed, ",", -1);
  for (guint i = 0; parts[i] != NULL; i++)
    {
      guint64 lo, hi;
      char *end;

      if (!g_ascii_isdigit (parts[i][0]))
        return FALSE;
      lo = g_ascii_strtoull (parts[i], &end, 10);
      hi = lo;
      if (*end == '-')
        {
          if (!g_ascii_isdigit (end[1]))
            return FALSE;
          hi = g_ascii_strtoull (end + 1, &end, 10);
        }
      if (*end != '\0' || hi < lo || hi >= CPU_SETSIZE)
        return FALSE;
      for (guint64 c = lo; c <= hi; c++)
        CPU_SET ((int) c, set);
    }
  return TRUE;
}

char *
mcq_cpu_list_format (const cpu_set_t *set)
{
  GString *s = g_string_new (NULL);

  for (int c = 0; c < CPU_SETSIZE; c++)
    {
      int end = c;

      if (!CPU_ISSET (c, set))
        continue;
      while (end + 1 < CPU_SETSIZE && CPU_ISSET (end + 1, set))
        end++;
      if (s->len > 0)
        g_string_append_c (s, ',');
      if (end == c)
        g_string_append_printf (s, "%d", c);
      else
        g_string_append_printf (s, "%d-%d", c, end);
      c = end;
    }
  return g_string_free (s, FALSE);
}

/* Adds the CPUs of each interrupt listed in dir/msi_irqs; FALSE if none
 * could be read.  An empty effective list (an interrupt shut down) falls
 * back to the configured one. */
static gboolean
add_msi_cpus (const char *procfs, const char *msi_dir, cpu_set_t *cpus)
{
  g_autoptr(GDir) d = g_dir_open (msi_dir, 0, NULL);
  const char *name;
  gboolean any = FALSE;

  if (d == NULL)
    return FALSE;
  while ((name = g_dir_read_name (d)) != NULL)
    {
      static const char *const files[] = { "effective_affinity_list", "smp_affinity_list" };

      for (guint i = 0; i < G_N_ELEMENTS (files); i++)
        {
          g_autofree char *path = g_build_filename (procfs, "irq", name, files[i], NULL);
          g_autofree char *text = NULL;
          cpu_set_t one;

          if (!g_file_get_contents (path, &text, NULL, NULL) || !mcq_cpu_list_parse (text, &one))
            continue;       /* missing, or empty: try the next file */
          CPU_OR (cpus, cpus, &one);
          any = TRUE;
          break;
        }
    }
  return any;
}

gboolean
mcq_disk_irq_cpus (const char *sysfs, const char *procfs, guint major, guint minor,
                   cpu_set_t *cpus, char **device, GError **error)
{
  g_autofree char *link = g_strdup_printf ("%s/dev/block/%u:%u", sysfs, major, minor);
  g_autofree char *top = realpath (sysfs, NULL);
  g_autofree char *dir = realpath (link, NULL);

  CPU_ZERO (cpus);
  if (top == NULL || dir == NULL)
    {
      g_set_error (error, G_FILE_ERROR, g_file_error_from_errno (errno),
                   "no block device %u:%u in %s", major, minor, sysfs);
      return FALSE;
    }
  g_autofree char *top_dir = g_strconcat (top, "/", NULL);
  /* Up from the partition or disk to the first device with MSI interrupts,
   * and no further than the first PCI device: above it are bridges and
   * root ports, whose interrupts are their own (errors, hot-plug), not the
   * disk's (a controller on legacy interrupts has no msi_irqs). */
  while (g_str_has_prefix (dir, top_dir))
    {
      g_autofree char *msi = g_build_filename (dir, "msi_irqs", NULL);
      g_autofree char *subsystem_link = NULL, *subsystem = NULL;
      char *slash;

      if (g_file_test (msi, G_FILE_TEST_IS_DIR))
        {
          if (!add_msi_cpus (procfs, msi, cpus))
            break;
          if (device != NULL)
            *device = g_path_get_basename (dir);
          return TRUE;
        }
      subsystem_link = g_build_filename (dir, "subsystem", NULL);
      subsystem = realpath (subsystem_link, NULL);
      if (subsystem != NULL && g_str_has_suffix (subsystem, "/bus/pci"))
        break;
      slash = strrchr (dir, '/');
      if (slash == NULL)
        break;
      *slash = '\0';
    }
  g_set_error (error, G_FILE_ERROR, G_FILE_ERROR_NOENT,
               "block device %u:%u has no MSI interrupts of its own in %s", major, minor, sysfs);
  return FALSE;
}

gboolean
mcq_placement_choose (const cpu_set_t *allowed, const cpu_set_t *irq, cpu_set_t *out)
{
  cpu_set_t both;

  CPU_AND (&both, allowed, irq);
  if (CPU_COUNT (&both) == 0 || CPU_EQUAL (&both, allowed))
    return FALSE;
  *out = both;
  return TRUE;
}

void
mcq_placement_apply (const char *dir)
{
  g_autoptr(GError) error = NULL;
  g_autofree char *device = NULL;
  cpu_set_t allowed, irq, chosen;
  struct stat st;

  if (stat (dir, &st) != 0 || major (st.st_dev) == 0)
    {
      g_debug ("CPU placement: %s is not on a block device; left alone", dir);
      return;
    }
  if (sched_getaffinity (0, sizeof allowed, &allowed) != 0)
    return;
  if (!mcq_disk_irq_cpus ("/sys", "/proc", major (st.st_dev), minor (st.st_dev), &irq,
                          &device, &error))
    {
      g_debug ("CPU placement: %s; left alone", error->message);
      return;
    }
  g_autofree char *irq_text = mcq_cpu_list_format (&irq);
  if (!mcq_placement_choose (&allowed, &irq, &chosen))
    {
      g_debug ("CPU placement: the interrupts of %s go to CPUs %s, which narrows nothing; "
               "left alone", device, irq_text);
      return;
    }
  g_autofree char *chosen_text = mcq_cpu_list_format (&chosen);
  if (sched_setaffinity (0, sizeof chosen, &chosen) != 0)
    {
      g_debug ("CPU placement: setting CPUs %s refused: %s", chosen_text, g_strerror (errno));
      return;
    }
  /* TRANSLATORS: the CPUs chosen ("4") and the disk's device
   * ("0000:00:02.0"). */
  g_info (_("fsync thread on CPUs %s, where the interrupts of the home's disk (%s) go"),
          chosen_text, device);
}
