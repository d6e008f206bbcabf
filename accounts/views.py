from __future__ import annotations

from django.contrib.auth import login
from django.contrib.auth.forms import UserCreationForm
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render

from accounts.services import user_signup
from chat.models import Assistant
from chat.serializers import ASSISTANT_NAME


class SignupForm(UserCreationForm):
    def clean_username(self) -> str:
        username: str = super().clean_username()
        if username.lower() == ASSISTANT_NAME:
            raise ValidationError("That name is reserved for the assistant.")
        # An assistant's handle, shared or a room's, is an @name that already means that
        # assistant: a member with it would make "@name" mean two things in its room.
        if Assistant.objects.filter(handle__iexact=username).exists():
            raise ValidationError("That name is an assistant's handle.")
        return username


def signup(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = SignupForm(request.POST)
        if form.is_valid():
            user = user_signup(form=form)
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            return redirect("home")
    else:
        form = SignupForm()
    return render(request, "registration/signup.html", {"form": form})
