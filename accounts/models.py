from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """Diploi's user. Custom from the start so that fields can be added without a painful migration."""

    email = models.EmailField("email address", blank=True, db_index=True)


class SSHKey(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ssh_keys")
    title = models.CharField(max_length=100)
    key_type = models.CharField(max_length=40)
    public_key = models.TextField(help_text="One line, OpenSSH format, without comment.")
    # A key identifies exactly one person to the SSH gateway, so it may be registered only once.
    fingerprint = models.CharField(max_length=60, unique=True)
    created = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        verbose_name = "SSH key"

    def __str__(self) -> str:
        return f"{self.title} ({self.fingerprint})"
