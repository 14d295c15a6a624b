from django import forms

from accounts.models import SSHKey
from accounts.sshkeys import InvalidKey, PrivateKeyPasted, PublicKey, parse_public_key


class SSHKeyForm(forms.Form):
    title = forms.CharField(max_length=100, required=False, help_text="Defaults to the key's comment.")
    public_key = forms.CharField(
        label="Public key",
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false", "autocomplete": "off"}),
        help_text="Begins with ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa.",
    )

    parsed: PublicKey

    def clean_public_key(self) -> str:
        try:
            self.parsed = parse_public_key(self.cleaned_data["public_key"])
        except PrivateKeyPasted as e:
            self.data = self.data.copy()
            self.data["public_key"] = ""  # never echo a private key back
            raise forms.ValidationError(str(e)) from None
        except InvalidKey as e:
            raise forms.ValidationError(str(e)) from None
        if SSHKey.objects.filter(fingerprint=self.parsed.fingerprint).exists():
            raise forms.ValidationError("This key is already registered.")
        return self.parsed.openssh

    def clean(self) -> dict:
        data = super().clean()
        if not data.get("title") and hasattr(self, "parsed"):
            data["title"] = self.parsed.comment[:100] or self.parsed.key_type
        return data
