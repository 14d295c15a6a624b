from django.contrib import admin
from django.contrib.auth.admin import UserAdmin

from accounts.models import SSHKey, User

admin.site.register(User, UserAdmin)


@admin.register(SSHKey)
class SSHKeyAdmin(admin.ModelAdmin):
    list_display = ("title", "user", "fingerprint", "created", "last_used")
    search_fields = ("title", "fingerprint", "user__username")
