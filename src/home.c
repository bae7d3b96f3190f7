/* home.c — preparing and locking the BDB home directory.
 * Berkeley DB lets several processes share an environment; memcacheq opens
 * it privately and runs recovery at start, so exactly one may use a home:
 * an flock() on the home directory itself enforces that (a file in it could
 * be deleted under a running daemon); <home>/memcacheq.lock, also locked,
 * names the pid holding it. */
#include "home.h"

#include <errno.h>
#include <fcntl.h>
#include <gio/gio.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "i18n.h"

#define LOCK_NAME "memcacheq.lock"

struct _McqHome {
  char *path;
  int dir_fd;                  /* the home itself, flock()ed */
  int lock_fd;
};

/* "<what> <path>: <reason>"; what is already translated. */
static gboolean
fail_errno (GError **error, int err, const char *what, const char *path)
{
  g_set_error (error, G_IO_ERROR, g_io_error_from_errno (err), "%s %s: %s", what, path,
               g_strerror (err));
  return FALSE;
}

/* The home is held by another process: names it by the pid in its lock
 * file, when that file is still there. */
static McqHome *
in_use (GError **error, const char *path, const char *lock_path)
{
  g_autofree char *pid = NULL;

  if (g_file_get_contents (lock_path, &pid, NULL, NULL))
    g_strstrip (pid);
  if (pid != NULL && *pid != '\0')
    g_set_error (error, G_IO_ERROR, G_IO_ERROR_BUSY,
                 _("the home directory %s is already in use by another memcacheq (pid %s)"),
                 path, pid);
  else
    g_set_error (error, G_IO_ERROR, G_IO_ERROR_BUSY,
                 _("the home directory %s is already in use by another memcacheq"), path);
  return NULL;
}

McqHome *
mcq_home_acquire (const char *path, GError **error)
{
  g_autofree char *lock_path = g_build_filename (path, LOCK_NAME, NULL);
  struct stat st;
  McqHome *home;
  int dir_fd, fd;

  if (g_mkdir_with_parents (path, 0750) != 0)
    {
      fail_errno (error, errno, _("cannot create the home directory"), path);
      return NULL;
    }
  if (stat (path, &st) != 0)
    {
      fail_errno (error, errno, _("cannot use the home directory"), path);
      return NULL;
    }
  if (!S_ISDIR (st.st_mode))
    {
      g_set_error (error, G_IO_ERROR, G_IO_ERROR_NOT_DIRECTORY,
                   _("the home directory %s is not a directory"), path);
      return NULL;
    }
  if (access (path, W_OK | X_OK) != 0)
    {
      fail_errno (error, errno, _("cannot write to the home directory"), path);
      return NULL;
    }

  dir_fd = open (path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0)
    {
      fail_errno (error, errno, _("cannot use the home directory"), path);
      return NULL;
    }
  /* A file system without flock on directories leaves only the lock file. */
  if (flock (dir_fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK)
    {
      close (dir_fd);
      return in_use (error, path, lock_path);
    }
  fd = open (lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0)
    {
      fail_errno (error, errno, _("cannot create the lock file"), lock_path);
      close (dir_fd);
      return NULL;
    }
  if (flock (fd, LOCK_EX | LOCK_NB) != 0)
    {
      close (fd);
      close (dir_fd);
      return in_use (error, path, lock_path);
    }

  home = g_new0 (McqHome, 1);
  home->path = g_strdup (path);
  home->dir_fd = dir_fd;
  home->lock_fd = fd;
  mcq_home_write_pid (home);
  return home;
}

void
mcq_home_write_pid (McqHome *home)
{
  char buf[32];
  int n = g_snprintf (buf, sizeof buf, "%ld\n", (long) getpid ());

  if (ftruncate (home->lock_fd, 0) != 0 || pwrite (home->lock_fd, buf, (size_t) n, 0) != n)
    g_debug ("could not record the pid in the lock file: %s", g_strerror (errno));
}

void
mcq_home_release (McqHome *home)
{
  if (home == NULL)
    return;
  if (ftruncate (home->lock_fd, 0) != 0)
    g_debug ("could not clear the lock file");
  close (home->lock_fd);
  close (home->dir_fd);
  g_free (home->path);
  g_free (home);
}
